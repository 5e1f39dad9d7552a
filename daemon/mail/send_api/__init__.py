"""SendGrid's v3 send API (`POST /v3/mail/send`) in front of the same submission path as
SMTP, with its own keys."""
