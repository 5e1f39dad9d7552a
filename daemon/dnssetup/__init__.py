"""What an operator publishes in DNS for egen's mail to be trusted (SPF, DKIM, DMARC,
MTA-STS, TLS-RPT, PTR), and checks of what is actually published. Used by `egen dns`
and scripts/dns-setup; nothing here runs inside the daemon."""
