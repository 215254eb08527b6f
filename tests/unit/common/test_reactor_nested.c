/* Unit test for the reactor's turns inside turns: a callback that waits by
 * running turns (as hvstord's control requests do during a backup) may see
 * another watch of the outer epoll batch deleted in there. The outer turn
 * must still find that watch marked, not freed (ASan catches a reuse). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <sys/epoll.h>
#include <unistd.h>

#include "common.h"

struct side {
    struct hv_reactor *r;
    struct hv_watch *watch;
    struct side *other;
    int fd;
    int calls;
};

static void on_ready(void *arg, uint32_t events)
{
    struct side *s = arg;
    char c;
    (void)events;
    s->calls++;
    if (read(s->fd, &c, 1) != 1)
        fail_msg("read");
    /* Whichever fires first deletes the other, whose event may be later in
     * this very batch, then waits in nested turns. */
    if (s->other->watch) {
        hv_reactor_del_fd(s->r, s->other->watch);
        s->other->watch = NULL;
        for (int i = 0; i < 3; i++)
            hv_reactor_run_once(s->r, 0);
    }
}

static void test_watch_deleted_in_a_nested_turn_is_freed_after_the_outer_one(void **state)
{
    struct hv_reactor *r;
    int a[2], b[2];
    struct side sa = {0}, sb = {0};
    (void)state;

    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(pipe(a), 0);
    assert_int_equal(pipe(b), 0);
    sa = (struct side){.r = r, .other = &sb, .fd = a[0]};
    sb = (struct side){.r = r, .other = &sa, .fd = b[0]};
    sa.watch = hv_reactor_add_fd(r, a[0], EPOLLIN, on_ready, &sa);
    sb.watch = hv_reactor_add_fd(r, b[0], EPOLLIN, on_ready, &sb);
    assert_non_null(sa.watch);
    assert_non_null(sb.watch);
    /* Both readable before the turn: one epoll batch holds both events. */
    assert_int_equal(write(a[1], "x", 1), 1);
    assert_int_equal(write(b[1], "y", 1), 1);
    assert_int_equal(hv_reactor_run_once(r, 100), 2);
    /* The one deleted was not called, by the outer turn or a nested one. */
    assert_int_equal(sa.calls + sb.calls, 1);
    hv_reactor_del_fd(r, sa.watch);
    hv_reactor_del_fd(r, sb.watch);
    hv_reactor_run_once(r, 0);
    hv_reactor_destroy(r);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_watch_deleted_in_a_nested_turn_is_freed_after_the_outer_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
