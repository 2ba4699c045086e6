-- Data subjects' rights (GDPR): what the store holds about a subject, found through the
-- catalog's subject pointers (sql/catalog/catalog.sql). Each use is recorded in the store's own stream
-- event_store-privacy (_es_record, src/append/record.rs), which the feed delivers to projections.

-- Art. 15: every event about the subject across all streams, with its provenance, and the
-- current state of each stream involved. Runs as the owner (it reads every event whatever
-- row level security shows the caller): granted to nobody, a superuser grants it to the
-- data-protection officer's role. It opens only values sealed under the subject's own keys:
-- another subject's personal data, in a stream the subject shares or copied into an event
-- about them, shows as [personal data].
CREATE FUNCTION @extschema@.es_subject_export(subject text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    doc jsonb;
BEGIN
    IF es_subject_export.subject IS NULL THEN
        RAISE EXCEPTION 'event_store: subject must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF es_subject_export.subject = '' THEN
        RAISE EXCEPTION 'event_store: subject must not be empty' USING ERRCODE = '22023';
    END IF;
    WITH about AS (
        -- Only the values sealed under the subject's own keys open.
        SELECT (r.e).*
          FROM _event_store.es_catalog_types t
          JOIN _event_store.log l ON l.event_type = t.event_type AND l.event_version = t.version,
               LATERAL (SELECT _event_store._es_reveal_for_subject(_event_store._es_event(l), es_subject_export.subject) AS e
                        OFFSET 0) r
         WHERE t.subject IS NOT NULL
           AND _event_store._es_subject_of(t.subject, (r.e).stream_id, (r.e).event_data, (r.e).metadata) = es_subject_export.subject
    )
    SELECT jsonb_build_object(
               'subject', es_subject_export.subject,
               'exported_at', now(),
               'exported_by', _event_store._es_calling_role(),
               'events', coalesce((
                   SELECT jsonb_agg(jsonb_build_object(
                              'stream_id', a.stream_id, 'stream_version', a.stream_version,
                              'global_position', a.global_position, 'event_id', a.event_id,
                              'event_type', a.event_type, 'event_version', a.event_version,
                              'created_at', a.created_at,
                              'appended_by', a.metadata -> 'appendedBy',
                              'correlation_id', a.metadata -> 'correlationId',
                              'causation_id', a.metadata -> 'causationId',
                              'data', a.event_data, 'metadata', a.metadata)
                          ORDER BY a.global_position)
                     FROM about a), '[]'),
               'streams', coalesce((
                   SELECT jsonb_object_agg(s.stream_id, jsonb_build_object(
                              'version', (SELECT v.version FROM _event_store.es_streams v WHERE v.stream_id = s.stream_id),
                              'state', _event_store._es_state_for_subject(s.stream_id, es_subject_export.subject)))
                     FROM (SELECT DISTINCT a.stream_id FROM about a) s), '{}'))
      INTO doc;
    -- The record holds no personal data: the subject only as a hash.
    PERFORM _event_store._es_record('privacy', 'SubjectExported', jsonb_build_object(
        'subject_sha256', encode(_event_store._es_subject_hash(es_subject_export.subject), 'hex'),
        'events', jsonb_array_length(doc -> 'events'),
        'streams', (SELECT count(*) FROM jsonb_object_keys(doc -> 'streams'))));
    RETURN doc;
END
$$;
COMMENT ON FUNCTION @extschema@.es_subject_export(text) IS
    'GDPR Art. 15: every event about a subject (by the catalog''s subject pointers) with provenance, and the state of each stream involved; recorded in event_store-privacy.';

-- Art. 17: destroys the subject's key, which erases every value sealed with it in every event,
-- snapshot and state, while every hash stays as it was. Recorded in event_store-privacy (who,
-- when, why, the subject hashed), where projections see it and purge their own copies.
-- Granted to nobody, like the export. Returns the number of keys destroyed (0: nothing of the
-- subject was sealed, or it was forgotten already).
CREATE FUNCTION @extschema@.es_forget_subject(subject text, reason text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    destroyed bigint;
BEGIN
    IF es_forget_subject.subject IS NULL OR es_forget_subject.reason IS NULL THEN
        RAISE EXCEPTION 'event_store: subject and reason must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF es_forget_subject.subject = '' OR btrim(es_forget_subject.reason) = '' THEN
        RAISE EXCEPTION 'event_store: subject and reason must not be empty' USING ERRCODE = '22023';
    END IF;
    UPDATE _event_store.es_subject_keys k
       SET wrapped = NULL, destroyed_at = now(), destroyed_by = _event_store._es_calling_role()
     WHERE k.subject_hash = _event_store._es_subject_hash(es_forget_subject.subject) AND k.wrapped IS NOT NULL;
    GET DIAGNOSTICS destroyed = ROW_COUNT;
    PERFORM _event_store._es_record('privacy', 'SubjectForgotten', jsonb_build_object(
        'subject_sha256', encode(_event_store._es_subject_hash(es_forget_subject.subject), 'hex'),
        'keys_destroyed', destroyed,
        'reason', es_forget_subject.reason));
    RETURN destroyed;
END
$$;
COMMENT ON FUNCTION @extschema@.es_forget_subject(text, text) IS
    'GDPR Art. 17: destroys the subject''s key (every value sealed with it reads as [erased]); recorded in event_store-privacy.';
