#!/bin/sh
# usage: embed.sh FILE OUT.S SYMBOL
# Writes an assembler source that carries FILE's bytes as the read-only array SYMBOL, ending
# at SYMBOL_end (meson.build: sbx carries the agent's image this way).
set -eu
file=$(realpath "$1")
printf '\t.section .rodata\n\t.balign 64\n\t.globl %s\n%s:\n\t.incbin "%s"\n\t.globl %s_end\n%s_end:\n\t.section .note.GNU-stack,"",@progbits\n' \
    "$3" "$3" "$file" "$3" "$3" >"$2"
