#!/bin/sh
# vse cluster demo (0123456789): one node agent per node (Torque/PBS, pbsdsh). Generated; do not edit.
#PBS -N vse-0123456789
#PBS -l nodes=4:ppn=1,walltime=12:00:00
#PBS -q batch
#PBS -A proj_1
#PBS -j oe
#PBS -o /scratch/vse/vse-0123456789/output/job.out
#PBS -S /bin/sh
set -eu
exec pbsdsh -u /bin/sh -c 'exec '\''/usr/bin/node'\'' '\''/opt/vse/dist/provider/agent/main.js'\'' --state-dir '\''/scratch/vse/vse-0123456789/host-'\''"$PBS_VNODENUM" '\''--token-file'\'' '\''/scratch/vse/vse-0123456789/token'\'' '\''--cluster-key'\'' '\''0123456789'\'' '\''--image-store'\'' '\''/scratch/vse/images'\'''
