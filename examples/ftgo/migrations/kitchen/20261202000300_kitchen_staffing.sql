-- A restaurant confirms tickets only while someone is on shift (`staffed`); until then
-- CreateOrderSaga's retriable `confirm_ticket` step retries, then parks for an operator.
ALTER TABLE ftgo_restaurants ADD COLUMN staffed BIGINT NOT NULL DEFAULT 1;
