#!/bin/bash
# A shell pipeline for checkpoint tests: the left side counts from 0, one
# number every 0.1 s (through an external `sleep`, so a child process is often
# in the middle of its nap at the checkpoint); the right side appends each
# number it reads from the pipe to the file named by $1.  After a restore the
# numbers must go on without a reset, a repeat or a gap.
out=$1
i=0
while true; do
    echo "$i"
    i=$((i + 1))
    sleep 0.1
done | while read -r line; do
    echo "$line" >>"$out"
done
