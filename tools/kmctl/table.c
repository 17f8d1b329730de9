/*
 * tools/kmctl/table.c - aligned text tables for the human output of stats
 * (columns as wide as their widest cell, two spaces apart, the last one
 * unpadded, widths in UTF-8 code points).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmctl.h"

void tbl_init(table *t, size_t ncols)
{
    memset(t, 0, sizeof *t);
    t->ncols = ncols;
}

/* Display width of UTF-8 text: code points, not bytes. */
static size_t u8width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

void tbl_cell(table *t, const char *fmt, ...)
{
    char b[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    if (t->failed)
        return;
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 64;
        char **c = realloc(t->cells, cap * sizeof *c);
        if (!c) {
            t->failed = 1;
            return;
        }
        t->cells = c;
        t->cap = cap;
    }
    if (!(t->cells[t->n] = strdup(b))) {
        t->failed = 1;
        return;
    }
    t->n++;
}

int tbl_print(table *t, const char *indent)
{
    if (t->failed || t->n % t->ncols) {
        errline(t->failed ? "out of memory" : "internal error: ragged table");
        return EX_FAILED;
    }
    size_t *w = calloc(t->ncols, sizeof *w);
    if (!w) {
        errline("out of memory");
        return EX_FAILED;
    }
    for (size_t i = 0; i < t->n; i++) {
        size_t c = i % t->ncols, x = u8width(t->cells[i]);
        if (x > w[c])
            w[c] = x;
    }
    for (size_t i = 0; i < t->n; i++) {
        size_t c = i % t->ncols;
        if (c == 0)
            fputs(indent, stdout);
        fputs(t->cells[i], stdout);
        if (c + 1 == t->ncols)
            putchar('\n');
        else
            printf("%*s", (int)(w[c] - u8width(t->cells[i]) + 2), "");
    }
    free(w);
    return EX_SUCCESS;
}

void tbl_free(table *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof *t);
}
