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

-- The window of `reset` containing `at`: `never` is one window from 1970 on (no end);
-- `billing_period` is the subscription's period [billing_start, billing_end) when `at` lies in
-- it, else the calendar month.
CREATE FUNCTION usage_window(
    reset text, at timestamptz, billing_start timestamptz, billing_end timestamptz
)
RETURNS TABLE (window_start timestamptz, window_end timestamptz)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN reset = 'never' THEN timestamptz '1970-01-01 00:00:00+00'
                WHEN in_billing THEN billing_start
                ELSE cal.window_start END,
           CASE WHEN reset = 'never' THEN NULL
                WHEN in_billing THEN billing_end
                ELSE cal.window_end END
    FROM (SELECT coalesce(reset = 'billing_period' AND billing_start <= at AND at < billing_end,
                          false) AS in_billing) AS b,
         usage_calendar_window(
             CASE WHEN reset IN ('billing_period', 'never') THEN 'month' ELSE reset END, at
         ) AS cal
$$;
