"""The journal: where accepted mail and events become durable before anything else happens
to them (DESIGN.md contract 1), and the consumer that drains it into Postgres."""
