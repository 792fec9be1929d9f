#!/bin/sh
# Example custom playbook script: says which node it would drain and changes nothing.
# Run by promptops.heal.policy.run_script with arguments as argv (never through a shell).
if [ "$#" -lt 1 ]; then
  echo "usage: drain_node.sh <node>" >&2
  exit 2
fi
echo "would drain node $1 (example script: nothing changed)"
