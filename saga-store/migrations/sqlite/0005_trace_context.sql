-- Tracing. A saga keeps the W3C trace context it started in, so the steps it runs later
-- (after a restart, a timer, an operator action) join the same trace.
ALTER TABLE saga_instances ADD COLUMN traceparent TEXT;
ALTER TABLE saga_instances ADD COLUMN tracestate TEXT;
