#!/bin/sh
# The namespace and the custom search attributes the platform writes (core/search_attributes.py names them).
set -eu
until temporal operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; do sleep 1; done
temporal operator namespace describe --address "$TEMPORAL_ADDRESS" --namespace "$NAMESPACE" >/dev/null 2>&1 \
  || temporal operator namespace create --address "$TEMPORAL_ADDRESS" --namespace "$NAMESPACE" --retention "$RETENTION"
for attribute in OrderStatus:Keyword CustomerId:Keyword OrderTotal:Int FailureReason:Keyword; do
  temporal operator search-attribute create --address "$TEMPORAL_ADDRESS" --namespace "$NAMESPACE" \
    --name "${attribute%%:*}" --type "${attribute#*:}" --yes 2>/dev/null || true   # exists on later runs
done
echo "namespace $NAMESPACE ready"
