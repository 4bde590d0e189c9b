-- Endpoint URLs never hold credentials: deliveries are authenticated by their signature, and a
-- `user:password@` kept here was shown to every admin and sent to whatever answered. Drop it
-- from URLs stored by older releases, and refuse it from now on.

UPDATE webhook_endpoints
SET url = regexp_replace(url, '^([a-z][a-z0-9+.-]*://)[^/?#]*@', '\1')
WHERE url ~ '^[a-z][a-z0-9+.-]*://[^/?#]*@';

ALTER TABLE webhook_endpoints
    ADD CONSTRAINT webhook_endpoints_url_without_credentials
    CHECK (url !~ '^[a-z][a-z0-9+.-]*://[^/?#]*@');
