/**
 * Names for the shapes the service sends and takes, all derived from the generated
 * `schema.ts` (openapi.yaml), so a change of the API shows up here as a type error.
 */

import type { components, operations } from "./schema.js";

type Schemas = components["schemas"];

/** The JSON body an operation answers with `status`. */
export type ResponseOf<
  Op extends keyof operations,
  Status extends keyof operations[Op]["responses"],
> = operations[Op]["responses"][Status] extends { content: { "application/json": infer Body } }
  ? Body
  : never;

/** The JSON body an operation takes. */
export type RequestOf<Op extends keyof operations> = operations[Op] extends {
  requestBody?: { content: { "application/json": infer Body } };
}
  ? Body
  : never;

/** The query parameters an operation takes. */
export type QueryOf<Op extends keyof operations> = NonNullable<
  operations[Op]["parameters"]["query"]
>;

export type UsageDecision = Schemas["UsageDecision"];
export type TrackedUsage = Schemas["TrackedUsage"];
export type Entitlements = Schemas["Entitlements"];
export type Entitlement = Entitlements["features"][number];
export type Customer = Schemas["Customer"];
export type CustomerInput = Schemas["CustomerInput"];
export type Subscription = Schemas["Subscription"];
export type Plan = Schemas["Plan"];
export type CheckoutInput = Schemas["CheckoutInput"];
export type CheckoutSession = Schemas["CheckoutSession"];
export type CheckoutSessionStatus = Schemas["CheckoutSessionStatus"];
export type PortalSession = ResponseOf<"createPortalSession", 201>;
export type SubscriptionChange = ResponseOf<"changeSubscription", 200>;
export type CancelInput = RequestOf<"cancelSubscription">;
export type UsageReport = ResponseOf<"getUsage", 200>;
export type UsageQuery = QueryOf<"getUsage">;
export type CustomerToken = ResponseOf<"issueCustomerToken", 201>;
export type TokenInput = RequestOf<"issueCustomerToken">;
export type TrackInput = RequestOf<"trackUsage">;
export type CheckInput = RequestOf<"checkUsage">;
export type PlanPage = ResponseOf<"listPlans", 200>;
export type PublicPlans = ResponseOf<"listPublicPlans", 200>;
