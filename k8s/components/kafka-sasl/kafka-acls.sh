#!/bin/sh
# The ACLs of README.md's principal table, run once inside the broker's pod, over its loopback listener (LOCAL,
# whose principal is the super user):
#   kubectl -n model-serving exec kafka-0 -- sh /opt/serving-kafka/kafka-acls.sh
# Idempotent: adding an ACL that exists changes nothing. Topic names are the serving-config ConfigMap's.
set -eu

acls() {
    /opt/kafka/bin/kafka-acls.sh --bootstrap-server localhost:9094 --add "$@"
}
data=recommender-records
models=recommender-models
results=recommender-results
dead=recommender-dead-letters
events=recommender-model-events
reports=recommender-challenger-reports
explanations=recommender-explanations
answered=recommender-answered

# The flow: reads records and models; writes results, dead letters, model events, challenger reports and
# explanations. Its
# consumers assign partitions themselves (offsets live in the recovery snapshots) under these fixed group ids.
acls --allow-principal User:serving --operation Read --operation Describe --topic "$data" --topic "$models"
acls --allow-principal User:serving --operation Write --operation Describe \
    --topic "$results" --topic "$dead" --topic "$events" --topic "$reports" --topic "$explanations" \
    --topic "$answered"
acls --allow-principal User:serving --operation Read --group BYTEWAX_IGNORED --group catch-up-lookup
# Exactly-once delivery: its transactional ids (serving.RESULTS_TOPIC.DATA_TOPIC.PARTITION), and the markers of
# what it answered, which only it may write (a forged one would drop answers) and reads back at each start
# (and whose configuration it checks: the markers must be compacted, not deleted by age).
acls --allow-principal User:serving --operation Write --operation Describe \
    --transactional-id "serving.$results." --resource-pattern-type prefixed
acls --allow-principal User:serving --operation Read --operation DescribeConfigs --topic "$answered"
acls --allow-principal User:serving --operation Read --group read-to-end- --resource-pattern-type prefixed

# Model publishers (the publish-model Job, people and CI publishing models): write models only; Describe on the
# flow's topics lets wait_for_topics.py see that they exist.
acls --allow-principal User:model-publisher --operation Write --topic "$models"
acls --allow-principal User:model-publisher --operation Describe \
    --topic recommender- --resource-pattern-type prefixed

# Producers of records (the services that want scores; serving-loadgen): write records only.
acls --allow-principal User:record-producer --operation Write --operation Describe --topic "$data"

# Consumers of results (serving-watch-results and the services that want scores): read results and
# explanations, any group.
acls --allow-principal User:results-reader --operation Read --operation Describe --topic "$results" \
    --topic "$explanations"
acls --allow-principal User:results-reader --operation Read --group '*'

# Retraining (serving-retrain): reads model events, under retrain-* groups, and writes models.
acls --allow-principal User:retrain --operation Read --operation Describe --topic "$events"
acls --allow-principal User:retrain --operation Read --group retrain- --resource-pattern-type prefixed
acls --allow-principal User:retrain --operation Write --operation Describe --topic "$models"

# The kafka-topics Job: creates and describes the flow's topics.
acls --allow-principal User:topics-admin --operation Create --operation Describe --operation DescribeConfigs \
    --topic recommender- --resource-pattern-type prefixed

/opt/kafka/bin/kafka-acls.sh --bootstrap-server localhost:9094 --list
