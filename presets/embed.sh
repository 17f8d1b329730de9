#!/bin/sh
# presets/embed.sh FILE SYMBOL: print a C file that defines SYMBOL as the
# bytes of FILE followed by a NUL (a C string) and SYMBOL_len as its length,
# so the library carries the file and looks up no path at run time.  Bytes
# go out as hex, so no character of FILE can break the C syntax.  Run by
# the Makefile; the output is generated, never committed.
set -eu
file=$1
sym=$2
printf '/* Generated from %s by presets/embed.sh: do not edit. */\n' "$file"
printf '#include <stddef.h>\n\n'
printf 'extern const char %s[];\nextern const size_t %s_len;\n\n' "$sym" "$sym"
printf 'const char %s[] = {\n' "$sym"
od -An -v -tx1 "$file" | sed -e 's/ *\([0-9a-f][0-9a-f]\)/0x\1, /g' -e 's/ $//' -e 's/^/    /'
printf '    0x00\n};\n'
printf 'const size_t %s_len = sizeof %s - 1;\n' "$sym" "$sym"
