#!/bin/sh
# vse cluster demo (0123456789): one node agent per compute node (ALPS aprun inside PBS). Generated; do not edit.
#PBS -N vse-0123456789
#PBS -l nodes=8:ppn=1,walltime=00:45:00
#PBS -q workq
#PBS -j oe
#PBS -o /lus/scratch/vse/vse-0123456789/output/job.out
#PBS -S /bin/sh
set -eu
cd '/lus/scratch/vse/vse-0123456789'
exec aprun -n 8 -N 1 /bin/sh -c 'exec '\''/usr/bin/node'\'' '\''/opt/vse/dist/provider/agent/main.js'\'' --state-dir '\''/lus/scratch/vse/vse-0123456789/host-'\''"$ALPS_APP_PE" '\''--token-file'\'' '\''/lus/scratch/vse/vse-0123456789/token'\'' '\''--cluster-key'\'' '\''0123456789'\'' '\''--image-store'\'' '\''/lus/scratch/vse/images'\'' '\''--policy'\'' '\''/etc/vse/site-policy.yaml'\'''
