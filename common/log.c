#include "common.h"

#include <stdlib.h>
#include <strings.h>
#include <time.h>

static int level = -1;
static const char *ident = "hvstor";

static enum hv_log_level level_from_env(void)
{
    const char *e = getenv("HVSTOR_LOG");
    static const char *names[] = { "error", "warn", "info", "debug" };
    for (unsigned i = 0; e && i < HV_ARRAY_SIZE(names); i++)
        if (!strcasecmp(e, names[i]))
            return (enum hv_log_level)i;
    return HV_LOG_INFO;
}

void hv_log_set_level(enum hv_log_level l) { level = (int)l; }

enum hv_log_level hv_log_get_level(void)
{
    if (level < 0)
        level = (int)level_from_env();
    return (enum hv_log_level)level;
}

void hv_log_set_ident(const char *name) { ident = name; }

void hv_log(enum hv_log_level l, const char *fmt, ...)
{
    static const char *tags[] = { "error: ", "warning: ", "", "debug: " };
    char line[2048];
    va_list ap;
    if (l > hv_log_get_level())
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* One write per line so that lines of concurrent processes do not mix. */
    fprintf(stderr, "%s: %s%s\n", ident, tags[l], line);
}
