-- Every process keeps the hashes of usable API keys and live customer tokens in memory and
-- learns of each change through LISTEN/NOTIFY (billing_service/invalidation.py). These triggers
-- notify inside the changing transaction, so a revocation reaches every process when it commits,
-- whoever made it: the HTTP route, `billing-service keys revoke`, or plain SQL. A TRUNCATE tells
-- every process to reload. Payloads carry hashes and ids, never a key or a token.

CREATE FUNCTION notify_api_key_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed api_keys%ROWTYPE;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('billing_api_keys', '{"op": "reset"}');
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    PERFORM pg_notify('billing_api_keys', json_build_object(
        'op', lower(TG_OP),
        'id', changed.id,
        'key_hash', encode(changed.key_hash, 'hex'),
        'usable', TG_OP <> 'DELETE' AND changed.revoked_at IS NULL
    )::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_notify AFTER INSERT OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION notify_api_key_change();
-- `last_used_at` moves once a minute per key in use: that needs no notification.
CREATE TRIGGER api_keys_notify_update AFTER UPDATE ON api_keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
          OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.scopes IS DISTINCT FROM NEW.scopes
          OR OLD.key_hash IS DISTINCT FROM NEW.key_hash
          OR OLD.name IS DISTINCT FROM NEW.name)
    EXECUTE FUNCTION notify_api_key_change();
CREATE TRIGGER api_keys_notify_truncate AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION notify_api_key_change();

CREATE FUNCTION notify_customer_token_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('billing_customer_tokens', '{"op": "reset"}');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('billing_customer_tokens', json_build_object(
            'op', 'delete', 'token_hash', encode(OLD.token_hash, 'hex')
        )::text);
    ELSE
        PERFORM pg_notify('billing_customer_tokens', json_build_object(
            'op', lower(TG_OP),
            'token_hash', encode(NEW.token_hash, 'hex'),
            'old_token_hash', CASE WHEN TG_OP = 'UPDATE' THEN encode(OLD.token_hash, 'hex') END,
            'expires_at', NEW.expires_at
        )::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER customer_tokens_notify AFTER INSERT ON customer_tokens
    FOR EACH ROW EXECUTE FUNCTION notify_customer_token_change();
CREATE TRIGGER customer_tokens_notify_update AFTER UPDATE ON customer_tokens
    FOR EACH ROW
    WHEN (OLD.expires_at IS DISTINCT FROM NEW.expires_at
          OR OLD.token_hash IS DISTINCT FROM NEW.token_hash)
    EXECUTE FUNCTION notify_customer_token_change();
-- Pruning deletes expired tokens by the thousand; only a live token's deletion is news.
CREATE TRIGGER customer_tokens_notify_delete AFTER DELETE ON customer_tokens
    FOR EACH ROW WHEN (OLD.expires_at > now())
    EXECUTE FUNCTION notify_customer_token_change();
CREATE TRIGGER customer_tokens_notify_truncate AFTER TRUNCATE ON customer_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION notify_customer_token_change();
