-- The usage window (the period a counter covers) that contains a moment, computed in SQL by the
-- same rule as billing_service/periods.py, so that a statement can find the counter of the
-- current window by its exact primary key instead of reading the latest counter row.
-- tests/db/test_usage_windows.py compares the two over many moments and every kind of reset.

-- A calendar window in UTC: hour, day, ISO week (from Monday), month or year.
CREATE FUNCTION usage_calendar_window(unit text, at timestamptz)
RETURNS TABLE (window_start timestamptz, window_end timestamptz)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT t AT TIME ZONE 'UTC',
           (t + make_interval(years => (unit = 'year')::int, months => (unit = 'month')::int,
                              weeks => (unit = 'week')::int, days => (unit = 'day')::int,
                              hours => (unit = 'hour')::int)) AT TIME ZONE 'UTC'
    FROM (SELECT date_trunc(unit, at AT TIME ZONE 'UTC') AS t) AS truncated
$$;

-- A boundary of a billing period renewed every month or year: `months` after `period_end`, on
-- the anchor day clamped to the month's length, at `period_end`'s time of day (UTC).
CREATE FUNCTION usage_billing_boundary(period_end timestamptz, anchor_day int, months int)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (m + make_interval(days => least(anchor_day, extract(day FROM
                                  m + interval '1 month' - interval '1 day')::int) - 1)
              + (period_end AT TIME ZONE 'UTC')::time) AT TIME ZONE 'UTC'
    FROM (SELECT date_trunc('month', period_end AT TIME ZONE 'UTC')
                 + make_interval(months => months) AS m) AS month_start
$$;

-- The billing period containing `at` (at or after `billing_end`), had Stripe renewed
-- [billing_start, billing_end) every `billing_interval` since: the mirror has not seen the
-- renewal yet. The anchor day is the end's, or the start's when the end is the last day of a
-- month shorter than the start's day (Jan 31 -> Feb 28 -> Mar 31), as periods.renewed_period.
CREATE FUNCTION usage_renewed_period(
    billing_start timestamptz, billing_end timestamptz, at timestamptz, billing_interval text
)
RETURNS TABLE (window_start timestamptz, window_end timestamptz)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN first > at THEN usage_billing_boundary(billing_end, anchor, months - step)
                ELSE first END,
           CASE WHEN first > at THEN first
                ELSE usage_billing_boundary(billing_end, anchor, months + step) END
    FROM (SELECT billing_start AT TIME ZONE 'UTC' AS s, billing_end AT TIME ZONE 'UTC' AS e,
                 at AT TIME ZONE 'UTC' AS n,
                 CASE billing_interval WHEN 'year' THEN 12 ELSE 1 END AS step) AS utc,
         LATERAL (SELECT
             CASE WHEN extract(day FROM e) = extract(day FROM
                           date_trunc('month', e) + interval '1 month' - interval '1 day')
                       AND extract(day FROM s) > extract(day FROM e)
                  THEN extract(day FROM s) ELSE extract(day FROM e) END::int AS anchor,
             ((extract(year FROM n) - extract(year FROM e)) * 12
              + extract(month FROM n) - extract(month FROM e))::int / step * step AS months
         ) AS k,
         LATERAL (SELECT usage_billing_boundary(billing_end, anchor, months) AS first) AS b
$$;

-- The window of `reset` containing `at`: `never` is one window from 1970 on (no end);
-- `billing_period` is the subscription's period [billing_start, billing_end) when `at` lies in
-- it, that period renewed every `billing_interval` when `at` is past its end (without an
-- interval: the calendar month), and the calendar month without a period.
CREATE FUNCTION usage_window(
    reset text, at timestamptz, billing_start timestamptz, billing_end timestamptz,
    billing_interval text
)
RETURNS TABLE (window_start timestamptz, window_end timestamptz)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN reset = 'never' THEN timestamptz '1970-01-01 00:00:00+00'
                WHEN in_billing THEN billing_start
                WHEN renewed THEN r.window_start
                ELSE cal.window_start END,
           CASE WHEN reset = 'never' THEN NULL
                WHEN in_billing THEN billing_end
                WHEN renewed THEN r.window_end
                ELSE cal.window_end END
    FROM (SELECT coalesce(reset = 'billing_period' AND billing_start <= at AND at < billing_end,
                          false) AS in_billing,
                 coalesce(reset = 'billing_period' AND billing_start IS NOT NULL
                          AND at >= billing_end AND billing_interval IS NOT NULL,
                          false) AS renewed) AS b,
         usage_calendar_window(
             CASE WHEN reset IN ('billing_period', 'never') THEN 'month' ELSE reset END, at
         ) AS cal,
         usage_renewed_period(billing_start, billing_end, at, billing_interval) AS r
$$;
