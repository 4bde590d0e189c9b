-- Whether a plan is listed by the public pricing route (`GET /v1/public/plans`). Every plan is
-- public unless the catalog says `public: false` (an enterprise or grandfathered plan that is
-- sold by hand); hidden plans still work everywhere else.
ALTER TABLE plans ADD COLUMN IF NOT EXISTS public boolean NOT NULL DEFAULT true;
