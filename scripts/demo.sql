-- The investigation from the design we were handed, done with event_store's own functions:
-- "SaaS generation failed but I was charged" - and the refund never happened.
\set ON_ERROR_STOP 1
\set QUIET 1
\pset footer off
SET client_min_messages = warning;

\echo
\echo '== 0. How events change an account: reducers, checked when defined (other events merge their data)'
\o /dev/null
SELECT es_define_reducer('user', 'UserEmailChanged', '{"op": "set", "path": "/email", "from": "/newEmail"}');
SELECT es_define_reducer('user', 'PaymentProcessed', '[{"op": "increment", "path": "/paid", "from": "/amount"},
                                                       {"op": "set", "path": "/currency", "from": "/currency"}]');
SELECT es_define_reducer('user', 'RefundInitiated', '{"op": "increment", "path": "/refunded", "from": "/amount"}');
SELECT es_define_reducer('user', 'SaaSGenerationFailed', '[{"op": "set", "path": "/status", "from": "/status"},
                                                           {"op": "set", "path": "/lastError", "from": "/error"}]');
\o
SELECT event_type, rule FROM es_reducers ORDER BY event_type;

\echo
\echo '== 0b. The event catalog: each type''s JSON Schema, its personal data and whose it is; appends are checked'
\ir catalog.sql
SELECT event_type, personal_data, subject, description FROM es_event_types ORDER BY event_type;

\echo
\echo '== 1. A day of traffic: 300 users register, submit intentions, pay, get their SaaS'
SET event_store.correlation_id = 'seed';
SELECT count(*) AS events_appended FROM (
    SELECT (es_append_batch('user-' || u, jsonb_build_array(
        jsonb_build_object('type', 'UserRegistered', 'data', jsonb_build_object(
            'userId', u::text, 'email', 'user' || u || '@example.com', 'tenantId', 'tenant-' || (u % 7), 'role', 'user')),
        jsonb_build_object('type', 'IntentionSubmitted', 'data', jsonb_build_object(
            'intentionId', (1000 + u)::text, 'userId', u::text, 'intention', 'a CRM for ' || u || ' plumbers', 'status', 'submitted')),
        jsonb_build_object('type', 'PaymentProcessed', 'data', jsonb_build_object('amount', 49.00, 'currency', 'EUR')),
        jsonb_build_object('type', 'SaaSGenerated', 'data', jsonb_build_object(
            'saasId', (5000 + u)::text, 'generatedBy', 'sofia-ai', 'confidence', 0.9))
    ), expected_version => 0)).*
    FROM generate_series(1, 300) AS u) appended;
SELECT count(*) AS email_changes FROM (
    SELECT es_append('user-' || u, 'UserEmailChanged', jsonb_build_object(
        'userId', u::text, 'oldEmail', 'user' || u || '@example.com', 'newEmail', 'u' || u || '@mail.example',
        'changedBy', 'user', 'reason', 'typo'))
    FROM generate_series(1, 300, 3) AS u) changed;
RESET event_store.correlation_id;

\echo
\echo '== 2. User 789 signs up, asks for a SaaS and pays; generation fails; the refund handler crashes'
\o /dev/null
SELECT stream_version FROM es_append('user-789', 'UserRegistered',
    '{"userId": "789", "email": "dana@example.com", "tenantId": "tenant-3", "role": "user"}', expected_version => 0);
SET event_store.correlation_id = 'req-7f3a';
SELECT stream_version FROM es_append('user-789', 'IntentionSubmitted',
    '{"intentionId": "456", "userId": "789", "intention": "booking site for my yoga studio", "status": "submitted"}');
SELECT stream_version FROM es_append('saas-789', 'SaaSGenerationStarted',
    '{"saasId": "789", "intentionId": "456", "generatedBy": "sofia-ai"}', expected_version => 0);
SELECT pg_sleep(0.3) \g /dev/null
SELECT stream_version FROM es_append('user-789', 'PaymentProcessed', '{"amount": 49.00, "currency": "EUR", "charged": true}');
SELECT pg_sleep(0.5) \g /dev/null
SELECT stream_version FROM es_append('saas-789', 'SaaSGenerationAborted', '{"reason": "model timeout"}');
SELECT stream_version FROM es_append('user-789', 'SaaSGenerationFailed',
    '{"intentionId": "456", "generatedBy": "sofia-ai", "error": "model timeout after 90s", "status": "failed"}');
RESET event_store.correlation_id;
\o
-- (the refund handler should now append RefundInitiated; it threw, and nothing was written)
\echo '   A buggy client sends a malformed payment: the catalog refuses it, and nothing is written.'
\set ON_ERROR_STOP 0
SELECT stream_version FROM es_append('user-789', 'PaymentProcessed', '{"amount": -49, "currency": "eur"}');
\set ON_ERROR_STOP 1

\echo
\echo '== 3. Support gets the ticket. What happened to user-789 today, in order?'
SELECT stream_version AS v, to_char(created_at, 'HH24:MI:SS.MS') AS at, event_type,
       event_data ->> 'status' AS status, metadata ->> 'correlationId' AS correlation
  FROM es_stream('user-789')
 WHERE created_at > now() - interval '1 day';

\echo '== 4. Was a refund ever issued, for anyone whose generation failed?'
SELECT f.stream_id, f.stream_version AS failed_at_version,
       EXISTS (SELECT FROM es_stream(f.stream_id) r WHERE r.event_type = 'RefundInitiated') AS refunded
  FROM event_store f
 WHERE f.event_type = 'SaaSGenerationFailed';

\echo '== 5. The account as it stood the moment generation failed (folded inside the database)'
SELECT jsonb_pretty(es_state_at('user-789',
    (SELECT created_at FROM es_stream('user-789') WHERE event_type = 'SaaSGenerationFailed'))) AS state_at_failure;

\echo '== 6. The handler is fixed; replaying the failure through it issues the refund.'
\echo '   expected_version guards against racing another writer; causationId links cause and effect.'
SELECT event_id AS failure_id, stream_version AS failure_version
  FROM es_stream('user-789') WHERE event_type = 'SaaSGenerationFailed' \gset
SET event_store.correlation_id = 'req-7f3a';
SELECT :'failure_id' AS causation \gset
SET event_store.causation_id = :'causation';
SELECT stream_version, global_position
  FROM es_append('user-789', 'RefundInitiated', '{"amount": 49.00, "currency": "EUR", "reason": "SaaS generation failed"}',
                 expected_version => :failure_version);
RESET event_store.correlation_id;
RESET event_store.causation_id;
SELECT stream_version AS v, event_type, metadata ->> 'causationId' = :'failure_id' AS caused_by_the_failure
  FROM es_stream('user-789', :failure_version);
\echo '   What the refund changed in the account, and which event changed it:'
SELECT stream_version AS v, event_type, correlation_id, path, before, after
  FROM es_diff('user-789', (SELECT created_at FROM es_stream('user-789') WHERE event_type = 'SaaSGenerationFailed'), now());

\echo '== 7. Everything that request touched, across streams'
SELECT stream_id, stream_version AS v, event_type FROM event_store
 WHERE metadata ->> 'correlationId' = 'req-7f3a' ORDER BY global_position;

\echo '== 8. The intention''s text is renamed to "description" in version 2 of IntentionSubmitted.'
\echo '   Stored events never change; an upcast shows old ones as version 2 to folds, handlers and readers who ask.'
\o /dev/null
SELECT es_define_event_type('IntentionSubmitted', '{
    "type": "object", "required": ["intentionId", "userId", "description", "status"],
    "properties": {"description": {"type": "string", "minLength": 1}, "status": {"const": "submitted"}}}',
    version => 2, description => 'A user described the SaaS they want',
    personal_data => ARRAY['/description'], subject => '/userId');
SELECT es_define_upcast('IntentionSubmitted', 1, '{"op": "rename", "from": "/intention", "path": "/description"}');
\o
SELECT s.event_version AS stored_version, u.event_version AS read_as_version, u.event_data ->> 'description' AS description
  FROM es_stream('user-789') s JOIN es_stream('user-789', upcast => true) u USING (stream_version)
 WHERE s.event_type = 'IntentionSubmitted';

\echo '== 9. Evidence an auditor can trust: nobody can rewrite this, and the hash chains verify'
\set ON_ERROR_STOP 0
DELETE FROM event_store WHERE stream_id = 'user-789' AND event_type = 'PaymentProcessed';
\set ON_ERROR_STOP 1
SELECT count(*) AS events, count(DISTINCT stream_id) AS streams,
       (SELECT count(*) FROM es_verify()) AS integrity_problems
  FROM event_store;

\echo '== 10. The auditor keeps a digest outside the database; tomorrow it proves today''s history unchanged,'
\echo '   even against a superuser who recomputes every hash.'
SELECT es_digest() AS digest \gset
SELECT :'digest'::jsonb -> 'position' AS position, :'digest'::jsonb -> 'events' AS events,
       left(:'digest'::jsonb ->> 'root', 16) || '...' AS root;
SELECT count(*) AS problems FROM es_verify_digest(:'digest');

\echo '== 11. User 789 asks what the company holds about them (GDPR Art. 15): every event, with provenance.'
SELECT e ->> 'stream_id' AS stream_id, e ->> 'event_type' AS event_type, e ->> 'created_at' AS at,
       e ->> 'appended_by' AS appended_by
  FROM jsonb_array_elements(es_subject_export('789') -> 'events') e;
\echo '   The export is recorded in the store''s own stream, without personal data:'
SELECT event_type, event_data FROM es_stream('event_store-privacy');

\echo '== 12. User 789 asks to be forgotten (GDPR Art. 17): their key is destroyed. Their email was'
\echo '   sealed with it when it was appended; now every read shows it erased, and nothing was rewritten.'
SELECT es_forget_subject('789', 'erasure request from the user, ticket 4711') AS keys_destroyed;
SELECT stream_version AS v, event_type, event_data ->> 'email' AS email, event_data ->> 'intention' AS intention
  FROM es_stream('user-789') WHERE event_type IN ('UserRegistered', 'IntentionSubmitted');
SELECT es_state('user-789') ->> 'email' AS email_in_state, (SELECT count(*) FROM es_verify()) AS integrity_problems;

\echo '== 13. Seven years on, retention removes what the schedule says (whole chunks here, on TimescaleDB),'
\echo '   anchoring each cut stream so that the checks stay clean; the worker can apply it as a policy.'
SELECT r -> 'events_removed' AS events_removed, r -> 'whole_chunks' AS whole_chunks
  FROM es_apply_retention(interval '7 years') r;
SELECT es_set_retention(interval '7 years');
SELECT older_than, set_by FROM es_retention;
