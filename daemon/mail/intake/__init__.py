"""SMTP intake: the listeners, the protocol object, relay policy and what happens to a
message between DATA and the queue."""
