#include "common.h"

#include <unistd.h>

void hv_progress_begin(struct hv_progress *p, const char *label, uint64_t total, bool force)
{
    memset(p, 0, sizeof(*p));
    p->label = label;
    p->total = total;
    p->start_ns = hv_now_ns();
    p->is_shown = force || isatty(STDERR_FILENO);
    hv_progress_update(p, 0);
}

static void draw(struct hv_progress *p)
{
    double frac = p->total ? (double)p->done / (double)p->total : 1.0;
    double secs = (double)(hv_now_ns() - p->start_ns) / 1e9;
    char a[32], b[32];
    int width = 30, fill = (int)(frac * width);
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = 0;
    fprintf(stderr, "\r%s [%s] %5.1f%% %s / %s  %.1fs", p->label, bar, frac * 100.0,
            hv_format_size(p->done, a), hv_format_size(p->total, b), secs);
    fflush(stderr);
}

void hv_progress_update(struct hv_progress *p, uint64_t done)
{
    p->done = done;
    if (!p->is_shown)
        return;
    uint64_t now = hv_now_ns();
    if (now - p->last_draw_ns < 100000000ull && done < p->total)
        return;
    p->last_draw_ns = now;
    draw(p);
}

void hv_progress_end(struct hv_progress *p)
{
    if (!p->is_shown)
        return;
    draw(p);
    fputc('\n', stderr);
}
