#!/bin/sh
# vse cluster demo (0123456789): one node agent per task (Grid Engine). Generated; do not edit.
#$ -N vse-0123456789
#$ -S /bin/sh
#$ -j y
#$ -o /scratch/vse/vse-0123456789/output
#$ -wd /scratch/vse/vse-0123456789
#$ -t 1-3
#$ -q vm.q
#$ -l h_rt=02:00:00
#$ -P proj_1
set -eu
exec '/usr/bin/node' '/opt/vse/dist/provider/agent/main.js' --state-dir '/scratch/vse/vse-0123456789/host-'"$((SGE_TASK_ID - 1))" '--token-file' '/scratch/vse/vse-0123456789/token' '--cluster-key' '0123456789' '--image-store' '/scratch/vse/images' '--policy' '/etc/vse/site-policy.yaml'
