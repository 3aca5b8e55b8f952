-- The route whose answer to a message's last attempt was lost (the route may have accepted it):
-- the next attempt goes to that route first. NULL after any other outcome.
ALTER TABLE outbox ADD COLUMN retry_route TEXT;
