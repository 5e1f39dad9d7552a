"""The mail relay: SMTP intake, policy, DKIM, queue and delivery."""
