-- The event catalog of the design we were handed: each event type's data as a JSON Schema,
-- which members hold personal data, and whose data it is. Used by the demo and by
-- docs/catalog.md (whose examples the tests run).
SELECT count(*) AS event_types_defined FROM (VALUES
  (es_define_event_type('UserRegistered', '{
      "type": "object", "required": ["userId", "email", "tenantId", "role"],
      "properties": {"userId": {"type": "string"}, "email": {"type": "string", "format": "email"},
                     "tenantId": {"type": "string"}, "role": {"enum": ["user", "admin"]}}}',
      description => 'A user signed up', personal_data => ARRAY['/email'], subject => '/userId')),
  (es_define_event_type('UserEmailChanged', '{
      "type": "object", "required": ["userId", "oldEmail", "newEmail", "changedBy"],
      "properties": {"userId": {"type": "string"}, "oldEmail": {"type": "string", "format": "email"},
                     "newEmail": {"type": "string", "format": "email"},
                     "changedBy": {"enum": ["user", "admin", "support"]}, "reason": {"type": "string"}}}',
      description => 'A user''s email address changed',
      personal_data => ARRAY['/oldEmail', '/newEmail'], subject => '/userId')),
  (es_define_event_type('UserRoleChanged', '{
      "type": "object", "required": ["userId", "oldRole", "newRole", "changedBy"],
      "properties": {"userId": {"type": "string"}, "oldRole": {"enum": ["user", "admin"]},
                     "newRole": {"enum": ["user", "admin"]}, "changedBy": {"type": "string"}}}',
      description => 'A user was given another role', subject => '/userId')),
  (es_define_event_type('IntentionSubmitted', '{
      "type": "object", "required": ["intentionId", "userId", "intention", "status"],
      "properties": {"intentionId": {"type": "string"}, "userId": {"type": "string"},
                     "intention": {"type": "string", "minLength": 1}, "status": {"const": "submitted"}}}',
      description => 'A user described the SaaS they want', personal_data => ARRAY['/intention'],
      subject => '/userId')),
  (es_define_event_type('SaaSGenerated', '{
      "type": "object", "required": ["saasId", "generatedBy"],
      "properties": {"saasId": {"type": "string"}, "generatedBy": {"type": "string"},
                     "confidence": {"type": "number", "minimum": 0, "maximum": 1}}}',
      description => 'The SaaS was generated')),
  (es_define_event_type('PaymentProcessed', '{
      "type": "object", "required": ["amount", "currency"],
      "properties": {"amount": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.01},
                     "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}, "charged": {"type": "boolean"}}}',
      description => 'A payment was taken', subject => 'stream')),
  (es_define_event_type('SaaSGenerationFailed', '{
      "type": "object", "required": ["intentionId", "error", "status"],
      "properties": {"intentionId": {"type": "string"}, "generatedBy": {"type": "string"},
                     "error": {"type": "string"}, "status": {"const": "failed"}}}',
      description => 'Generating the SaaS failed', subject => 'stream')),
  (es_define_event_type('RefundInitiated', '{
      "type": "object", "required": ["amount", "currency", "reason"],
      "properties": {"amount": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.01},
                     "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}, "reason": {"type": "string"}}}',
      description => 'A refund was started', subject => 'stream'))
) AS defined(nothing);
