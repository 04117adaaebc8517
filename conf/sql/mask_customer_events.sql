-- The masked view of conf/policies/customer-events.yaml, in Flink SQL: the same fields, the same
-- transforms and the same parameters, so the same records and keys give the same masked values
-- (tests/integration/test_sql.py compares the two field by field).
--
--   flink-anonymizer sql conf/sql/mask_customer_events.sql --keyring file:keyring.json \
--       --set bootstrap_servers=kafka:9092 [--set bounded_mode=latest-offset]
--
-- Every ${name:-default} below is replaced by --set name=VALUE, or else by its default.
-- The command registers the functions (mask_email for mask.email, ...) with keys from --keyring.
-- Elsewhere (a SQL client, a script), declare each one by module path; its keys then come from
-- the keyring JSON in $ANON_KEYRING:
--   CREATE TEMPORARY FUNCTION mask_email AS 'udfs.sql_functions.mask_email' LANGUAGE PYTHON;
--
-- How SQL differs from the policy job:
--   * no dead-letter topic: a record that is not a JSON object is skipped ('json.ignore-parse-errors'),
--     a value that does not fit its transform becomes NULL (metric transform_refused), and typed
--     columns convert ("37" is read as 37 where the policy dead-letters it);
--   * NULL and absent are one thing in SQL: a null field is left out of the output;
--   * no policy headers (policy_id, key_ids) on the output records.
-- Fields the policy does not name (lat, lon, notes, ...) are not columns here: denied by default.

CREATE TEMPORARY TABLE raw_customer_events (
  customerId STRING,
  name STRING,
  email STRING,
  ssn STRING,
  card STRING,
  phone STRING,
  age INT,
  zip STRING,
  address STRING,          -- the JSON object as text; protect_json applies the policy's address.* rules
  items STRING,            -- the JSON array as text; protect_json applies the items[*] rules
  region STRING,
  purchaseAmount DOUBLE,
  `timestamp` STRING
) WITH (
  'connector' = 'kafka',
  'topic' = '${source_topic:-raw-customer-events}',
  'properties.bootstrap.servers' = '${bootstrap_servers:-localhost:9092}',
  'properties.group.id' = '${group_id:-flink-anonymizer-sql}',
  'properties.isolation.level' = 'read_committed',
  'scan.startup.mode' = '${startup_mode:-earliest-offset}',
  'scan.bounded.mode' = '${bounded_mode:-unbounded}',
  'format' = 'json',
  'json.ignore-parse-errors' = 'true'
);

-- The value is the finished JSON document: a typed JSON sink cannot hold the items[*] arrays that
-- protect_json returns as text, JSON_OBJECT with JSON(...) can.
CREATE TEMPORARY TABLE masked_customer_events (
  `key` STRING,
  `value` STRING
) WITH (
  'connector' = 'kafka',
  'topic' = '${sink_topic:-masked-customer-events}',
  'properties.bootstrap.servers' = '${bootstrap_servers:-localhost:9092}',
  'key.format' = 'raw',
  'key.fields' = 'key',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY',
  'sink.delivery-guarantee' = '${delivery:-exactly-once}',
  'sink.transactional-id-prefix' = '${transactional_id_prefix:-anon-sql-customer-events-masked}',
  -- the broker caps transactions at 15 min by default; the connector would ask for 1 h
  'properties.transaction.timeout.ms' = '900000'
);

-- views.masked.fields of the policy, one line each. Keyed transforms are keyed per domain. A
-- policy's default domain is the field's last name (a function's is its variant), so write it out
-- when it matters, as for card here; substitutions default to their kind in both (person_name).
INSERT INTO masked_customer_events
SELECT
  customerId,
  JSON_OBJECT(
    'customerId' VALUE customerId,                                                  -- keep
    'name' VALUE substitute_person_name(name),                                      -- {substitute: person_name}
    'email' VALUE mask_email(email),                                                -- {mask: email}
    'ssn' VALUE mask_keep_last(ssn, '{n: 4}'),                                      -- {mask: keep_last, n: 4}
    'card' VALUE fpe_ff1(card, '{format: card, domain: card_number, cache_size: 65536}'),
    'phone' VALUE mask_phone(phone),                                                -- {mask: phone}
    'age' VALUE age,                                                                -- {keep: integer}
    'zip' VALUE zip,                                                                -- {keep: string}
    'address' VALUE JSON(protect_json(address, '{
        "address.street": {substitute: street_address},
        "address.city": keep,
        "address.state": keep,
        "address.zip": {keep: string}}')),
    'items' VALUE JSON(protect_json(items, '{
        "items[*].sku": keep,
        "items[*].qty": {keep: integer},
        "items[*].card": {fpe: ff1, format: card, domain: card_number, cache_size: 65536}}')),
    'region' VALUE region,                                                          -- keep
    'purchaseAmount' VALUE purchaseAmount,                                          -- {keep: number}
    'timestamp' VALUE `timestamp`                                                   -- keep
    ABSENT ON NULL)
FROM raw_customer_events;
