-- The usage window (the period a counter covers) that contains a moment, computed in SQL by the
-- same rule as billing_service/periods.py, so that a statement can find the counter of the
-- current window by its exact primary key instead of reading the latest counter row.
-- tests/db/test_usage_windows.py compares the two over many moments and every kind of reset.
--
-- Every function is one SQL expression, so PostgreSQL inlines them into the calling query and
-- evaluates only the branch of the CASE that applies.

-- A calendar window in UTC: hour, day, ISO week (from Monday), month or year.
CREATE FUNCTION usage_calendar_start(unit text, at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT date_trunc(unit, at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' $$;

CREATE FUNCTION usage_calendar_end(unit text, at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (date_trunc(unit, at AT TIME ZONE 'UTC')
            + make_interval(years => (unit = 'year')::int, months => (unit = 'month')::int,
                            weeks => (unit = 'week')::int, days => (unit = 'day')::int,
                            hours => (unit = 'hour')::int)) AT TIME ZONE 'UTC'
$$;

-- A boundary of a billing period renewed every month or year: `months` after `period_end`, on
-- the anchor day clamped to the month's length, at `period_end`'s time of day (UTC).
CREATE FUNCTION usage_billing_boundary(period_end timestamptz, anchor_day int, months int)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (date_trunc('month', period_end AT TIME ZONE 'UTC') + make_interval(months => months)
            + make_interval(days => least(anchor_day, extract(day FROM
                  date_trunc('month', period_end AT TIME ZONE 'UTC')
                  + make_interval(months => months + 1) - interval '1 day')::int) - 1)
            + (period_end AT TIME ZONE 'UTC')::time) AT TIME ZONE 'UTC'
$$;

-- The billing cycle anchor's day, read off a period: the end's day, or the start's when the
-- end is the last day of a month shorter than the start's day (Jan 31 -> Feb 28 gives 31).
CREATE FUNCTION usage_billing_anchor(billing_start timestamptz, billing_end timestamptz)
RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN extract(day FROM billing_end AT TIME ZONE 'UTC')
                     = extract(day FROM date_trunc('month', billing_end AT TIME ZONE 'UTC')
                                        + interval '1 month' - interval '1 day')
                 AND extract(day FROM billing_start AT TIME ZONE 'UTC')
                     > extract(day FROM billing_end AT TIME ZONE 'UTC')
                THEN extract(day FROM billing_start AT TIME ZONE 'UTC')
                ELSE extract(day FROM billing_end AT TIME ZONE 'UTC') END::int
$$;

-- How many months after `billing_end` the latest renewal due by `at` falls, counted in whole
-- intervals (`step` months) by calendar month; one interval too many when `at` precedes the
-- anchor day in its month (usage_renewed_* step back then).
CREATE FUNCTION usage_renewal_months(billing_end timestamptz, at timestamptz, step int)
RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT ((extract(year FROM at AT TIME ZONE 'UTC')
             - extract(year FROM billing_end AT TIME ZONE 'UTC')) * 12
            + extract(month FROM at AT TIME ZONE 'UTC')
            - extract(month FROM billing_end AT TIME ZONE 'UTC'))::int / step * step
$$;

-- The billing period containing `at` (at or after `billing_end`), had Stripe renewed
-- [billing_start, billing_end) every `step` months since (periods.renewed_period).
CREATE FUNCTION usage_renewed_start(
    billing_start timestamptz, billing_end timestamptz, at timestamptz, step int
) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN usage_billing_boundary(billing_end, anchor, months) > at
                THEN usage_billing_boundary(billing_end, anchor, months - step)
                ELSE usage_billing_boundary(billing_end, anchor, months) END
    FROM (SELECT usage_billing_anchor(billing_start, billing_end) AS anchor,
                 usage_renewal_months(billing_end, at, step) AS months) AS k
$$;

CREATE FUNCTION usage_renewed_end(
    billing_start timestamptz, billing_end timestamptz, at timestamptz, step int
) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN usage_billing_boundary(billing_end, anchor, months) > at
                THEN usage_billing_boundary(billing_end, anchor, months)
                ELSE usage_billing_boundary(billing_end, anchor, months + step) END
    FROM (SELECT usage_billing_anchor(billing_start, billing_end) AS anchor,
                 usage_renewal_months(billing_end, at, step) AS months) AS k
$$;

-- The window of `reset` containing `at`: `never` is one window from 1970 on (no end);
-- `billing_period` is the subscription's period [billing_start, billing_end) when `at` lies in
-- it, that period renewed every `billing_interval` (month or year) when `at` is past its end
-- (without an interval: the calendar month), and the calendar month without a period.
CREATE FUNCTION usage_window(
    reset text, at timestamptz, billing_start timestamptz, billing_end timestamptz,
    billing_interval text
)
RETURNS TABLE (window_start timestamptz, window_end timestamptz)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN reset = 'never' THEN timestamptz '1970-01-01 00:00:00+00'
                WHEN reset <> 'billing_period' THEN usage_calendar_start(reset, at)
                WHEN billing_start <= at AND at < billing_end THEN billing_start
                WHEN billing_start IS NOT NULL AND at >= billing_end
                     AND billing_interval IS NOT NULL
                THEN usage_renewed_start(billing_start, billing_end, at,
                                         CASE billing_interval WHEN 'year' THEN 12 ELSE 1 END)
                ELSE usage_calendar_start('month', at) END,
           CASE WHEN reset = 'never' THEN NULL
                WHEN reset <> 'billing_period' THEN usage_calendar_end(reset, at)
                WHEN billing_start <= at AND at < billing_end THEN billing_end
                WHEN billing_start IS NOT NULL AND at >= billing_end
                     AND billing_interval IS NOT NULL
                THEN usage_renewed_end(billing_start, billing_end, at,
                                       CASE billing_interval WHEN 'year' THEN 12 ELSE 1 END)
                ELSE usage_calendar_end('month', at) END
$$;
