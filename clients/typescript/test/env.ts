/** What the suite runs against: a live service and keys, from the environment. */

export function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} must be set: the suite runs against a live billing-service`);
  return value;
}

export const BILLING_URL = required("BILLING_URL");
/** A key with the `billing` scope. */
export const KEY = required("KEY");
/** A key with the `usage` scope. */
export const USAGE_KEY = required("USAGE_KEY");

/** A customer id no other test (or run) uses. */
export function customerId(label: string): string {
  return `ts-${label}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}
