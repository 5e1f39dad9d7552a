"""The mail relay: SMTP intake, policy, DKIM, queue and delivery; here, what more than one
of them uses (the message's bytes, DKIM, DSN parameters, the settings)."""
