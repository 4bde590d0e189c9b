"""The declarative catalog: the YAML file's schema, its cross-checks, and parsing with field paths.

The same models describe `catalog.yaml`, the bodies of `PUT /v1/plans/{key}` and
`PUT /v1/features/{key}`, and what `catalog export` writes. The whole catalog is always
validated together, so a plan can never refer to a feature that does not exist.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
)

from billing_service.errors import FieldError, ValidationFailed

KEY_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
Key = Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
Reset = Literal["hour", "day", "week", "month", "year", "billing_period", "never"]
Overage = Literal["deny", "allow", "bill"]
FeatureKind = Literal["boolean", "metered"]


# Stripe's largest unit amount (999,999.99 in a two-decimal currency).
MAX_AMOUNT = 99_999_999
# Allowances and grants: far beyond any real quota, and exact in every JSON reader (< 2**53).
MAX_UNITS = 10**15
MAX_DISPLAY_ORDER = 1_000_000
MAX_SEATS = 100_000


def _minor_units(value: object) -> object:
    """An amount is a whole number of the currency's minor units. Text ("19.00"), decimals
    (19.00 in YAML is a float) and booleans are refused rather than read as 19 cents or 1 cent."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    kind = {bool: "a boolean", str: "a string", float: "a decimal number"}.get(type(value))
    raise ValueError(
        "must be an integer number of the currency's minor units, e.g. 1900 for 19.00 USD"
        + (f", not {kind}" if kind else "")
    )


# Checked before any coercion: the same rule in the YAML file and in JSON bodies.
Amount = Annotated[int, BeforeValidator(_minor_units)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    kind: FeatureKind
    unit: str | None = Field(default=None, min_length=1, max_length=50)


def _unit_amount(value: object) -> object:
    """A per-unit price may be a decimal of minor units (0.5 is half a cent); read from the
    number's text so 0.1 stays 0.1. Text and booleans are refused."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(  # noqa: TRY004 - pydantic reports ValueError as a field error
            "must be a number of the currency's minor units, e.g. 2 for 0.02 USD"
        )
    return Decimal(str(value))


class OveragePrice(_Strict):
    """What one unit past the allowance costs, billed through a Stripe meter."""

    amount_per_unit: Annotated[
        Decimal, BeforeValidator(_unit_amount), Field(gt=0, le=MAX_AMOUNT, decimal_places=12)
    ]
    currency: Annotated[str, StringConstraints(pattern=r"^[a-z]{3}$")]

    @field_validator("currency", mode="before")
    @classmethod
    def _lowercase_currency(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class MemberLimit(_Strict):
    """Each member's own allowance of a feature, within the team's."""

    limit: int = Field(ge=0, le=MAX_UNITS)


class MeteredLimit(_Strict):
    """A metered feature's allowance in a plan. `limit: null` means unlimited. With
    `overage: bill`, units past the limit are allowed and billed at `overage_price`. With
    `per_seat`, the limits are per seat (times the seats bought); `per_member` caps each member."""

    enabled: bool = True
    limit: int | None = Field(default=None, ge=0, le=MAX_UNITS)
    soft_limit: int | None = Field(default=None, ge=0, le=MAX_UNITS)
    reset: Reset = "month"
    overage: Overage = "deny"
    overage_price: OveragePrice | None = None
    per_seat: bool = False
    per_member: MemberLimit | None = None


class PriceSpec(_Strict):
    amount: Amount = Field(ge=0, le=MAX_AMOUNT, description="In the currency's minor units.")
    currency: Annotated[str, StringConstraints(pattern=r"^[a-z]{3}$")]
    type: Literal["recurring", "one_time"] = "recurring"
    interval: Literal["month", "year"] | None = None
    grants: dict[Key, Annotated[int, Field(gt=0, le=MAX_UNITS)]] = Field(default_factory=dict)
    # Sold per seat: the quantity bought is the team's seats.
    per_seat: bool = False

    @field_validator("currency", mode="before")
    @classmethod
    def _lowercase_currency(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class PlanSpec(_Strict):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    default: bool = False
    trial_days: int = Field(default=0, ge=0, le=730)
    display_order: int = Field(default=0, ge=-MAX_DISPLAY_ORDER, le=MAX_DISPLAY_ORDER)
    # Listed by the public pricing route; false for plans sold by hand (still usable everywhere).
    public: bool = True
    # The most seats one subscription may hold (per-seat plans only); None: no bound.
    max_seats: int | None = Field(default=None, ge=1, le=MAX_SEATS)
    features: dict[Key, StrictBool | MeteredLimit] = Field(default_factory=dict)
    prices: dict[Key, PriceSpec] = Field(default_factory=dict)


class CatalogSpec(_Strict):
    features: dict[Key, FeatureSpec] = Field(default_factory=dict)
    plans: dict[Key, PlanSpec] = Field(default_factory=dict)


def is_valid_key(value: str) -> bool:
    """Feature, plan and lookup keys: lowercase letters, digits and underscores."""
    return re.fullmatch(KEY_PATTERN, value) is not None


def cross_check(catalog: CatalogSpec) -> list[FieldError]:
    """The rules one model cannot see alone: references, kinds, the default plan, unique keys."""
    errors: list[FieldError] = []
    defaults = [key for key, plan in catalog.plans.items() if plan.default]
    if catalog.plans and len(defaults) != 1:
        found = ", ".join(defaults) or "none"
        errors.append(FieldError("plans", f"exactly one plan must have default: true ({found})"))
    owner_of_lookup_key: dict[str, str] = {}
    for plan_key, plan in catalog.plans.items():
        errors += _check_allowances(catalog, plan_key, plan)
        errors += _check_seats(plan_key, plan)
        for lookup_key, price in plan.prices.items():
            path = f"plans.{plan_key}.prices.{lookup_key}"
            if lookup_key in owner_of_lookup_key:
                other = owner_of_lookup_key[lookup_key]
                errors.append(FieldError(path, f"lookup key already used by plan '{other}'"))
            owner_of_lookup_key[lookup_key] = plan_key
            errors += _check_price(catalog, path, price)
    return errors


def _check_allowances(catalog: CatalogSpec, plan_key: str, plan: PlanSpec) -> list[FieldError]:
    errors = []
    for feature_key, allowance in plan.features.items():
        path = f"plans.{plan_key}.features.{feature_key}"
        feature = catalog.features.get(feature_key)
        if feature is None:
            errors.append(FieldError(path, f"unknown feature '{feature_key}'"))
        elif feature.kind == "boolean" and not isinstance(allowance, bool):
            errors.append(FieldError(path, "a boolean feature takes true or false"))
        elif isinstance(allowance, MeteredLimit) and _soft_above_hard(allowance):
            errors.append(FieldError(f"{path}.soft_limit", "must not exceed limit"))
        elif isinstance(allowance, MeteredLimit):
            errors += _check_billing(plan, path, allowance)
    return errors


def _check_seats(plan_key: str, plan: PlanSpec) -> list[FieldError]:
    """Seats are sold by a recurring per-seat price: limits per seat or per member, and a
    maximum of seats, need one."""
    errors = []
    path = f"plans.{plan_key}"
    for lookup_key, price in plan.prices.items():
        if price.per_seat and price.type != "recurring":
            errors.append(FieldError(f"{path}.prices.{lookup_key}.per_seat",
                                     "only recurring prices are sold per seat"))  # fmt: skip
    if any(p.per_seat and p.type == "recurring" for p in plan.prices.values()):
        return errors
    if plan.max_seats is not None:
        errors.append(FieldError(f"{path}.max_seats", "needs a per-seat price in the plan"))
    for feature_key, allowance in plan.features.items():
        if isinstance(allowance, MeteredLimit) and (allowance.per_seat or allowance.per_member):
            field = "per_seat" if allowance.per_seat else "per_member"
            errors.append(FieldError(f"{path}.features.{feature_key}.{field}",
                                     "needs a per-seat price in the plan"))  # fmt: skip
    return errors


def _check_billing(  # noqa: PLR0911 - one return per rule reads best
    plan: PlanSpec, path: str, allowance: MeteredLimit
) -> list[FieldError]:
    """`overage: bill` needs a price, a limit to bill past, and a recurring plan price in the
    same currency (Stripe puts the metered price on that subscription)."""
    price = allowance.overage_price
    if allowance.overage != "bill":
        if price is not None:
            return [FieldError(f"{path}.overage_price", "only used with overage: bill")]
        return []
    if price is None:
        return [FieldError(f"{path}.overage_price", "required with overage: bill")]
    if allowance.limit is None:
        return [FieldError(f"{path}.limit", "overage: bill needs a limit (0 bills every unit)")]
    recurring = [p for p in plan.prices.values() if p.type == "recurring"]
    if not recurring:
        return [FieldError(f"{path}.overage", "billing overage needs a recurring plan price")]
    if any(p.currency != price.currency for p in recurring):
        return [
            FieldError(
                f"{path}.overage_price.currency", "must be the currency of the plan's prices"
            )
        ]
    return []


def _check_price(catalog: CatalogSpec, path: str, price: PriceSpec) -> list[FieldError]:
    errors = []
    if price.type == "recurring" and price.interval is None:
        errors.append(FieldError(f"{path}.interval", "required for a recurring price"))
    if price.type == "one_time" and price.interval is not None:
        errors.append(FieldError(f"{path}.interval", "only recurring prices have one"))
    if price.grants and price.type != "one_time":
        errors.append(FieldError(f"{path}.grants", "only one-time prices grant credits"))
    for feature_key in price.grants:
        feature = catalog.features.get(feature_key)
        if feature is None or feature.kind != "metered":
            errors.append(FieldError(f"{path}.grants.{feature_key}", "must name a metered feature"))
    return errors


def _soft_above_hard(allowance: MeteredLimit) -> bool:
    return (
        allowance.soft_limit is not None
        and allowance.limit is not None
        and allowance.soft_limit > allowance.limit
    )


def _field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        # Drop pydantic's union branch names ("bool", "MeteredLimit") from paths.
        parts = [str(part) for part in error["loc"] if part not in {"bool", "MeteredLimit"}]
        errors.append(
            FieldError(
                ".".join([p for p in [prefix, *parts] if p]) or "catalog",
                error["msg"].removeprefix("Value error, "),
            )
        )
    return errors


def validated(catalog: CatalogSpec) -> CatalogSpec:
    errors = cross_check(catalog)
    if errors:
        raise ValidationFailed(errors, "The catalog is invalid.")
    return catalog


def parse_catalog(data: Any) -> CatalogSpec:
    """Validate a loaded document as a whole catalog; every problem is reported with its path."""
    try:
        catalog = CatalogSpec.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(_field_errors(exc), "The catalog is invalid.") from None
    return validated(catalog)


def load_catalog_yaml(text: str) -> CatalogSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValidationFailed([FieldError("catalog", f"not valid YAML{where}")]) from None
    return parse_catalog({} if data is None else data)


def _allowance_document(allowance: bool | MeteredLimit) -> object:
    """Metered allowances always show their limit and reset; other defaults are left out."""
    if isinstance(allowance, bool):
        return allowance
    document: dict[str, object] = {"limit": allowance.limit}
    if allowance.soft_limit is not None:
        document["soft_limit"] = allowance.soft_limit
    document["reset"] = allowance.reset
    if allowance.overage != "deny":
        document["overage"] = allowance.overage
    if allowance.per_seat:
        document["per_seat"] = True
    if allowance.per_member is not None:
        document["per_member"] = {"limit": allowance.per_member.limit}
    if allowance.overage_price is not None:
        amount = allowance.overage_price.amount_per_unit
        whole = amount == amount.to_integral_value()
        document["overage_price"] = {
            "amount_per_unit": int(amount) if whole else float(amount),
            "currency": allowance.overage_price.currency,
        }
    return document


def dump_catalog_yaml(catalog: CatalogSpec) -> str:
    """YAML that `load_catalog_yaml` reads back to the same catalog."""
    document = catalog.model_dump(mode="json", exclude_defaults=True)
    for key, plan in catalog.plans.items():
        if plan.features:
            document["plans"][key]["features"] = {
                feature: _allowance_document(allowance)
                for feature, allowance in plan.features.items()
            }
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
