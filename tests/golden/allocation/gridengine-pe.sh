#!/bin/sh
# vse cluster demo (0123456789): one node agent per slot (Grid Engine). Generated; do not edit.
#$ -N vse-0123456789
#$ -S /bin/sh
#$ -j y
#$ -o /scratch/vse/vse-0123456789/output
#$ -wd /scratch/vse/vse-0123456789
#$ -pe vse 3
#$ -q vm.q
#$ -l h_rt=02:00:00
#$ -P proj_1
set -eu
i=0
while read -r host slots rest; do
  n=0
  while [ "$n" -lt "$slots" ]; do
    if [ "$i" -gt 0 ]; then qrsh -inherit -nostdin "$host" /bin/sh -c 'exec '\''/usr/bin/node'\'' '\''/opt/vse/dist/provider/agent/main.js'\'' --state-dir '\''/scratch/vse/vse-0123456789/host-'\''""$1"" '\''--token-file'\'' '\''/scratch/vse/vse-0123456789/token'\'' '\''--cluster-key'\'' '\''0123456789'\'' '\''--image-store'\'' '\''/scratch/vse/images'\'' '\''--policy'\'' '\''/etc/vse/site-policy.yaml'\''' agent "$i" & fi
    i=$((i + 1)); n=$((n + 1))
  done
done < "$PE_HOSTFILE"
set -- 0
exec '/usr/bin/node' '/opt/vse/dist/provider/agent/main.js' --state-dir '/scratch/vse/vse-0123456789/host-'""$1"" '--token-file' '/scratch/vse/vse-0123456789/token' '--cluster-key' '0123456789' '--image-store' '/scratch/vse/images' '--policy' '/etc/vse/site-policy.yaml'
