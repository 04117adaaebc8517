# flink-anonymizer: every target bootstraps what it needs, and is idempotent.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CLI := $(VENV)/bin/flink-anonymizer
POLICY ?= conf/policies/customer-events.yaml
SAMPLE := conf/samples/customer-events.jsonl
PYTEST_ARGS ?=

.PHONY: run test lint bench jars kafka-up kafka-down vault-up vault-down registry-up registry-down prometheus-up prometheus-down cluster-up cluster-down submit demo-kafka cdc-demo clean help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): setup.cfg
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

jars: $(STAMP) ## fetch the Kafka broker and the Flink Kafka connector from Maven Central; build the job's Java bundler (conf/bundle)
	@bash conf/fetch_jars.sh
	@bash conf/bundle/build.sh $(PY)

run: $(STAMP) jars ## run the main job in a local MiniCluster on the bundled sample events
	$(CLI) run --policy $(POLICY) --input $(SAMPLE) --output out --dev-keyring

test: $(STAMP) jars ## the whole suite, integration tests included
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check .

bench: $(STAMP) jars ## benchmarks (not tests): each prints side-by-side ratios
	$(PY) bench/masked_view.py --scaling
	$(PY) bench/full_job.py --views --rounds 3
	$(PY) bench/fpe.py
	$(PY) -m bench.k_anonymity
	$(PY) -m bench.dp_aggregates
	$(PY) bench/tokenization.py
	$(PY) bench/profile_job.py
	$(PY) bench/kafka_e2e.py
	$(PY) bench/scaling.py

kafka-up: $(STAMP) jars ## start a single-node KRaft broker on 127.0.0.1:9092, data in .local/kafka
	$(PY) -m flink_jobs.devtools.kafka_broker up --data-dir .local/kafka --port 9092

kafka-down: $(STAMP) ## stop it
	$(PY) -m flink_jobs.devtools.kafka_broker down --data-dir .local/kafka

vault-up: $(STAMP) ## start a local PostgreSQL for the token vault on 127.0.0.1:5433, data in .local/pg
	$(PY) -m flink_jobs.devtools.pg_local up --data-dir .local/pg --port 5433

vault-down: $(STAMP) ## stop it
	$(PY) -m flink_jobs.devtools.pg_local down --data-dir .local/pg

registry-up: $(STAMP) ## build (Maven, conf/registry) and start a Confluent-compatible schema registry (Apicurio, in memory) on 127.0.0.1:8085
	$(PY) -m flink_jobs.devtools.registry up --data-dir .local/registry --port 8085

registry-down: $(STAMP) ## stop it (its schemas are lost)
	$(PY) -m flink_jobs.devtools.registry down --data-dir .local/registry

prometheus-up: $(STAMP) ## start a real Prometheus (Debian's package) on 127.0.0.1:9090 scraping a job's --metrics-port 9249 every 1 s; TARGETS="127.0.0.1:9249 127.0.0.1:9250" for others
	$(PY) -m flink_jobs.devtools.prometheus up --data-dir .local/prometheus --port 9090 $(foreach t,$(or $(TARGETS),127.0.0.1:9249),--target $(t))

prometheus-down: $(STAMP) ## stop it (its data stays in .local/prometheus)
	$(PY) -m flink_jobs.devtools.prometheus down --data-dir .local/prometheus

demo-kafka: $(STAMP) jars ## broker up, sample events produced, job run, views shown beside the raw records
	$(PY) -m flink_jobs.devtools.kafka_demo

cdc-demo: $(STAMP) jars ## PostgreSQL, Kafka Connect + Debezium, the job on conf/policies/customers-cdc.yaml: views beside raw change events; AVRO=1 for debezium-avro through the registry
	$(PY) -m flink_jobs.devtools.cdc_demo $(if $(AVRO),--avro)

BOOTSTRAP ?= 127.0.0.1:9092
KEYRING ?= file:.local/dev-keyring.json

cluster-up: $(STAMP) jars ## start a standalone Flink cluster on 127.0.0.1:8081 (conf/flink; state in .local/flink); METRICS_PORT=9249-9259 for Prometheus
	$(PY) -m flink_jobs.devtools.cluster up --state-dir .local/flink --rest-port 8081 --rpc-port 6123 $(if $(METRICS_PORT),--metrics-port $(METRICS_PORT))

cluster-down: $(STAMP) ## stop it
	$(PY) -m flink_jobs.devtools.cluster down --state-dir .local/flink

submit: $(STAMP) jars ## flink run protect_stream on the cluster: make submit POLICY=... BOOTSTRAP=... KEYRING=file:...
	$(CLI) submit --policy $(POLICY) --bootstrap-servers $(BOOTSTRAP) --keyring $(KEYRING)

clean: ## remove outputs (keeps the venv and the jars)
	rm -rf out .pytest_cache
