-- Every process answers checks and entitlement reads from an in-memory snapshot per customer
-- (billing_service/services/entitlement_cache.py) and learns of each change that can alter a
-- decision through LISTEN/NOTIFY on `billing_entitlements`. These triggers notify inside the
-- changing transaction, so no code path (a webhook's effect, a credit grant, the CLI, plain
-- SQL) can forget. Payloads carry ids, never a customer's own key:
--   a customer's uuid   their counters, credits, subscriptions or record changed;
--   "new"               a customer record appeared (or changed its key): snapshots of unknown
--                       customers are dropped;
--   "*"                 the catalog changed, or a table was truncated: everything is dropped.
-- PostgreSQL delivers one notification per distinct payload per transaction.
--
-- One exception, for cost: a transaction that notifies takes a cluster-wide lock at commit and
-- holds it through its WAL flush, so notifying in every track would serialise the commits of
-- all tracks (measured: ~10x fewer counter updates per second at 32 connections). The
-- service's own connections say so with `billing.publishes_usage = on`; for them, a track's
-- moves of `used` and of spent credits do not notify here, and the service publishes the
-- customers it tracked right after commit, many per notifying transaction
-- (billing_service/services/usage_publisher.py).

CREATE FUNCTION notify_entitlement_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('billing_entitlements', '*');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('billing_entitlements', OLD.customer_id::text);
    ELSE
        PERFORM pg_notify('billing_entitlements', NEW.customer_id::text);
        IF TG_OP = 'UPDATE' AND OLD.customer_id IS DISTINCT FROM NEW.customer_id THEN
            PERFORM pg_notify('billing_entitlements', OLD.customer_id::text);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- Counters and credit balances: a track on the service's own connections publishes itself.
CREATE FUNCTION notify_usage_entitlement_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('billing.publishes_usage', true) = 'on' THEN
        IF TG_TABLE_NAME = 'usage_counters' THEN
            RETURN NULL;
        END IF;
        IF TG_OP = 'UPDATE' THEN
            IF OLD.granted = NEW.granted THEN  -- credits spent by a track, not granted
                RETURN NULL;
            END IF;
        END IF;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('billing_entitlements', OLD.customer_id::text);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('billing_entitlements', NEW.customer_id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION notify_customer_entitlement_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('billing_entitlements', 'new');
    ELSE
        PERFORM pg_notify('billing_entitlements', OLD.id::text);
        IF TG_OP = 'UPDATE' THEN
            PERFORM pg_notify('billing_entitlements', 'new');
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- Per customer: what they used, what credits they hold, what they subscribe to.
CREATE TRIGGER usage_counters_notify_entitlements AFTER INSERT OR UPDATE OR DELETE
    ON usage_counters FOR EACH ROW EXECUTE FUNCTION notify_usage_entitlement_change();
CREATE TRIGGER credit_balances_notify_entitlements AFTER INSERT OR UPDATE OR DELETE
    ON credit_balances FOR EACH ROW EXECUTE FUNCTION notify_usage_entitlement_change();
CREATE TRIGGER subscriptions_notify_entitlements AFTER INSERT OR UPDATE OR DELETE
    ON subscriptions FOR EACH ROW EXECUTE FUNCTION notify_entitlement_change();

-- A snapshot is found by the customer's key: only a new record or a changed key matters.
CREATE TRIGGER customers_notify_entitlements AFTER INSERT OR DELETE
    ON customers FOR EACH ROW EXECUTE FUNCTION notify_customer_entitlement_change();
CREATE TRIGGER customers_notify_entitlements_key AFTER UPDATE ON customers
    FOR EACH ROW WHEN (OLD.external_id IS DISTINCT FROM NEW.external_id)
    EXECUTE FUNCTION notify_customer_entitlement_change();

-- The catalog applies to everyone: one notification per statement, whatever it touched.
CREATE TRIGGER features_notify_entitlements AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON features FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlement_change();
CREATE TRIGGER plans_notify_entitlements AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON plans FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlement_change();
CREATE TRIGGER plan_features_notify_entitlements AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON plan_features FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlement_change();
CREATE TRIGGER prices_notify_entitlements AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON prices FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlement_change();

-- A truncation leaves nothing row by row to report.
CREATE TRIGGER usage_counters_notify_entitlements_truncate AFTER TRUNCATE ON usage_counters
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlement_change();
CREATE TRIGGER credit_balances_notify_entitlements_truncate AFTER TRUNCATE ON credit_balances
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlement_change();
CREATE TRIGGER subscriptions_notify_entitlements_truncate AFTER TRUNCATE ON subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlement_change();
CREATE TRIGGER customers_notify_entitlements_truncate AFTER TRUNCATE ON customers
    FOR EACH STATEMENT EXECUTE FUNCTION notify_entitlement_change();
