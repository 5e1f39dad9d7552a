-- What the mail pages read: the log's accepted events newest first (one per message, so
-- the log lists messages even after they left the queue), and the delivery status
-- notifications that report on a message ("about": the original's queue ID).

CREATE INDEX mail_events_accepted ON mail_events (at DESC, id DESC) WHERE event = 'accepted';
CREATE INDEX mail_events_about ON mail_events ((detail->>'about'))
    WHERE event = 'accepted' AND detail ? 'about';
