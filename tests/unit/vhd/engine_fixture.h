/* The reactor the engine tests (test_engine*.c) run their bdevs in: one for
 * the whole group, made by setup and destroyed by teardown
 * (cmocka_run_group_tests(tests, setup, teardown)). */
#ifndef HVSTOR_TEST_ENGINE_FIXTURE_H
#define HVSTOR_TEST_ENGINE_FIXTURE_H

#include "vhd.h"

static struct hv_reactor *reactor;

static int setup(void **state)
{
    (void)state;
    return hv_reactor_create(&reactor);
}

static int teardown(void **state)
{
    (void)state;
    hv_reactor_destroy(reactor);
    return 0;
}

#endif
