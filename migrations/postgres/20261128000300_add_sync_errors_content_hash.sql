-- sync_errors.content_hash: the member's content hash when the provider refused it, so an
-- address the provider calls invalid is skipped until the member row changes.
ALTER TABLE sync_errors ADD COLUMN content_hash TEXT;
