/*
 * VM identities: WWN text forms, iSCSI name syntax, and the allocator's
 * promises (NAA-5 with the configured OUI, sets A and B distinct, unique
 * across many VMs and across hosts, persistent across restarts, never reused
 * after a VM is deleted, layout changes refused).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "npiv_internal.h"
#include "testlib.h"

#define OUI 0x001438u

static int dir_counter;

static const char *fresh_dir(void)
{
    static char dir[512];
    snprintf(dir, sizeof(dir), "%s/state%d", t_tmpdir(), dir_counter++);
    mkdir(dir, 0700);
    return dir;
}

static struct npiv_config config(uint32_t host_id)
{
    struct npiv_config c;
    npiv_config_init(&c);
    c.oui = OUI;
    c.host_id = host_id;
    snprintf(c.iqn_prefix, sizeof(c.iqn_prefix), "iqn.2026-11.com.example.h%" PRIu32, host_id);
    return c;
}

static struct npiv_allocator *open_alloc(const char *dir, uint32_t host_id)
{
    struct npiv_config c = config(host_id);
    struct npiv_allocator *a = NULL;
    struct hv_err err;
    int ret = npiv_allocator_open(dir, &c, &a, &err);
    if (ret < 0)
        fail_msg("%s", err.msg);
    return a;
}

static struct npiv_identity alloc(struct npiv_allocator *a, const char *name)
{
    struct npiv_identity id;
    struct hv_err err;
    if (npiv_identity_allocate(a, name, NULL, &id, &err) < 0)
        fail_msg("%s", err.msg);
    return id;
}

static void test_wwn_text_forms_round_trip_and_garbage_is_refused(void **state)
{
    char hex[17], colon[24];
    uint64_t w;

    npiv_wwn_hex(0x5001438000000401ull, hex);
    assert_string_equal(hex, "5001438000000401");
    npiv_wwn_colon(0x5001438000000401ull, colon);
    assert_string_equal(colon, "50:01:43:80:00:00:04:01");
    assert_int_equal(npiv_wwn_parse("50:01:43:80:00:00:04:01", &w), 0);
    assert_true(w == 0x5001438000000401ull);
    assert_int_equal(npiv_wwn_parse("5001438000000401\n", &w), 0);
    assert_true(w == 0x5001438000000401ull);
    assert_int_equal(npiv_wwn_parse("0x20000024ff31c9a4\n", &w), 0);     /* sysfs */
    assert_true(w == 0x20000024ff31c9a4ull);
    assert_int_equal(npiv_wwn_parse("0x0", &w), 0);                      /* unset fabric */
    assert_true(w == 0);
    assert_int_equal(npiv_wwn_parse("50:01:43:80:00:00:04:0G", &w), -EINVAL);
    assert_int_equal(npiv_wwn_parse("50014380000004011", &w), -EINVAL);
    assert_int_equal(npiv_wwn_parse("500143800000040", &w), -EINVAL);
    assert_int_equal(npiv_wwn_parse("50-01-43-80-00-00-04-01", &w), -EINVAL);
    assert_int_equal(npiv_wwn_parse("0x", &w), -EINVAL);
    assert_int_equal(npiv_wwn_parse("0x12345678901234567", &w), -EINVAL);
    assert_int_equal(npiv_wwn_parse("", &w), -EINVAL);
    assert_int_equal(npiv_wwn_naa(0x5001438000000401ull), 5);
    assert_int_equal(npiv_wwn_oui(0x5001438000000401ull), 0x001438);
}

static void test_iscsi_names_follow_rfc3720(void **state)
{
    struct hv_err err;
    char longname[300];

    /* the RFC's own examples */
    assert_int_equal(npiv_iscsi_name_validate("iqn.2001-04.com.example:storage:diskarrays-"
                                              "sn-a8675309", &err), 0);
    assert_int_equal(npiv_iscsi_name_validate("iqn.2001-04.com.example", &err), 0);
    assert_int_equal(npiv_iscsi_name_validate("iqn.2001-04.com.example:storage.tape1.sys1.xyz",
                                              &err), 0);
    assert_int_equal(npiv_iscsi_name_validate("eui.02004567A425678D", &err), 0);
    assert_int_equal(npiv_iscsi_name_validate("naa.52004567BA64678D", &err), 0);
    assert_int_equal(npiv_iscsi_name_validate("naa.62004567BA64678D0123456789ABCDEF", &err), 0);

    assert_int_equal(npiv_iscsi_name_validate("iqn.2001-04.com.Example:x", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "uppercase 'E' at offset 16"));
    assert_int_equal(npiv_iscsi_name_validate("iqn.2001-13.com.example", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "month 13"));
    assert_int_equal(npiv_iscsi_name_validate("iqn.01-04.com.example", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "yyyy-mm date"));
    assert_int_equal(npiv_iscsi_name_validate("iqn.2001-04", &err), -EINVAL);
    assert_int_equal(npiv_iscsi_name_validate("iqn.2001-04.:x", &err), -EINVAL);
    assert_int_equal(npiv_iscsi_name_validate("iqn.2001-04.com..example", &err), -EINVAL);
    assert_int_equal(npiv_iscsi_name_validate("iqn.2001-04.com.example.", &err), -EINVAL);
    assert_int_equal(npiv_iscsi_name_validate("iqn.2001-04.com.example:", &err), -EINVAL);
    assert_int_equal(npiv_iscsi_name_validate("iqn.2001-04.com.example:a b", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "character 0x20"));
    assert_int_equal(npiv_iscsi_name_validate("iqn.2001-04.com.example:a_b", &err), -EINVAL);
    assert_int_equal(npiv_iscsi_name_validate("iscsi.2001-04.com.example", &err), -EINVAL);
    assert_int_equal(npiv_iscsi_name_validate("eui.02004567A425678", &err), -EINVAL);
    assert_int_equal(npiv_iscsi_name_validate("naa.52004567BA64678Z", &err), -EINVAL);
    assert_int_equal(npiv_iscsi_name_validate("", &err), -EINVAL);

    /* 223 bytes is the limit, 224 is refused */
    memset(longname, 'a', sizeof(longname));
    memcpy(longname, "iqn.2001-04.com.example:", 24);
    longname[223] = '\0';
    assert_int_equal(npiv_iscsi_name_validate(longname, &err), 0);
    longname[223] = 'a';
    longname[224] = '\0';
    assert_int_equal(npiv_iscsi_name_validate(longname, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "224 bytes, at most 223"));
}

static void test_sets_a_and_b_are_distinct_naa5_with_the_configured_oui(void **state)
{
    struct npiv_allocator *a = open_alloc(fresh_dir(), 5);
    struct npiv_identity id = alloc(a, "web1");

    assert_string_equal(id.vm_name, "web1");
    assert_string_equal(id.iqn, "iqn.2026-11.com.example.h5:vm.web1");
    uint64_t w[4] = { id.fc[0].wwpn, id.fc[0].wwnn, id.fc[1].wwpn, id.fc[1].wwnn };
    for (int i = 0; i < 4; i++) {
        assert_int_equal(npiv_wwn_naa(w[i]), 5);
        assert_int_equal(npiv_wwn_oui(w[i]), OUI);
        /* host id 5 in the top 10 vendor-specific bits */
        assert_int_equal((w[i] >> 26) & 0x3FF, 5);
        /* the serial right below it */
        assert_true(((w[i] >> 2) & ((1ull << 24) - 1)) == id.serial);
        for (int j = i + 1; j < 4; j++)
            assert_true(w[i] != w[j]);
    }
    /* kind bits: WWNN A, WWPN A, WWNN B, WWPN B */
    assert_int_equal(id.fc[NPIV_SET_A].wwnn & 3, 0);
    assert_int_equal(id.fc[NPIV_SET_A].wwpn & 3, 1);
    assert_int_equal(id.fc[NPIV_SET_B].wwnn & 3, 2);
    assert_int_equal(id.fc[NPIV_SET_B].wwpn & 3, 3);
    npiv_allocator_close(a);
}

static int u64_cmp(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

static void assert_all_distinct(uint64_t *w, size_t n)
{
    qsort(w, n, sizeof(*w), u64_cmp);
    for (size_t i = 1; i < n; i++)
        assert_true(w[i] != w[i - 1]);
}

static void test_many_vms_two_hosts_and_restarts_never_share_a_wwn(void **state)
{
    enum { PER_HOST = 120 };
    const char *dir1 = strdup(fresh_dir()), *dir2 = strdup(fresh_dir());
    uint64_t *w = calloc(2 * PER_HOST * 4, sizeof(*w));
    size_t n = 0;
    char name[32];

    /* two hosts sharing the OUI, each with its own host id and state dir;
     * each "restarts" (closes and reopens its allocator) every 40 VMs */
    for (int host = 1; host <= 2; host++) {
        const char *dir = host == 1 ? dir1 : dir2;
        struct npiv_allocator *a = NULL;
        uint64_t last_serial = 0;
        for (int i = 0; i < PER_HOST; i++) {
            if (i % 40 == 0) {
                if (a) {
                    uint64_t next = npiv_allocator_next_serial(a);
                    npiv_allocator_close(a);
                    a = open_alloc(dir, (uint32_t)host);
                    assert_true(npiv_allocator_next_serial(a) == next);   /* read back */
                } else {
                    a = open_alloc(dir, (uint32_t)host);
                }
            }
            snprintf(name, sizeof(name), "vm%d", i);
            struct npiv_identity id = alloc(a, name);
            if (i)
                assert_true(id.serial > last_serial);
            last_serial = id.serial;
            w[n++] = id.fc[0].wwpn;
            w[n++] = id.fc[0].wwnn;
            w[n++] = id.fc[1].wwpn;
            w[n++] = id.fc[1].wwnn;
        }
        npiv_allocator_close(a);
    }
    assert_int_equal(n, 2 * PER_HOST * 4);
    assert_all_distinct(w, n);
    free(w);
    free((void *)dir1);
    free((void *)dir2);
}

static void test_deleted_vm_identity_is_never_reused(void **state)
{
    const char *dir = fresh_dir();
    struct npiv_allocator *a = open_alloc(dir, 1);
    struct npiv_identity old = alloc(a, "db");
    /* The daemon deletes VM "db": nothing to tell us. After a restart a new
     * VM of the same name gets new WWNs, and an IQN that is not the old one,
     * so SAN ACLs granted to the old VM do not let the new one in. */
    npiv_allocator_close(a);
    a = open_alloc(dir, 1);
    struct npiv_identity renewed = alloc(a, "db");
    assert_true(renewed.serial > old.serial);
    for (int s = 0; s < 2; s++) {
        assert_true(renewed.fc[s].wwpn != old.fc[s].wwpn);
        assert_true(renewed.fc[s].wwnn != old.fc[s].wwnn);
        assert_true(renewed.fc[s].wwpn != old.fc[1 - s].wwpn);
    }
    assert_string_equal(old.iqn, "iqn.2026-11.com.example.h1:vm.db");
    char want[128];
    snprintf(want, sizeof(want), "iqn.2026-11.com.example.h1:vm.db.%" PRIu64, renewed.serial);
    assert_string_equal(renewed.iqn, want);
    npiv_allocator_close(a);
}

static void test_reservation_is_on_disk_before_the_identity_is_returned(void **state)
{
    const char *dir = fresh_dir();
    char path[600];
    json_t *j;
    struct hv_err err;
    struct npiv_allocator *a = open_alloc(dir, 1);
    struct npiv_identity id = alloc(a, "app");

    snprintf(path, sizeof(path), "%s/npiv.json", dir);
    assert_int_equal(hv_json_read_file(path, &j, &err), 0);
    assert_true((uint64_t)json_integer_value(json_object_get(j, "next_serial")) == id.serial + 1);
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "issued_iqns"), 0)),
                        id.iqn);
    json_decref(j);

    /* a crash in the middle of a later write leaves a temp file behind and
     * the old state in place: the next allocation moves on from it */
    snprintf(path, sizeof(path), "%s/npiv.json.tmp.99999", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"version\": 1, \"next_ser", f);
    fclose(f);
    npiv_allocator_close(a);
    a = open_alloc(dir, 1);
    struct npiv_identity next = alloc(a, "app2");
    assert_true(next.serial == id.serial + 1);
    npiv_allocator_close(a);
}

static void test_layout_change_and_bad_config_are_refused(void **state)
{
    const char *dir = fresh_dir();
    struct npiv_allocator *a = open_alloc(dir, 3), *b = NULL;
    struct npiv_config c;
    struct hv_err err;
    npiv_allocator_close(a);

    c = config(4);                      /* same state dir, another host id */
    assert_int_equal(npiv_allocator_open(dir, &c, &b, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "npiv.json: made for OUI 001438 host id 3/10 bits"));
    assert_non_null(strstr(err.msg, "use a new state dir"));
    c = config(3);
    c.host_id_bits = 12;
    assert_int_equal(npiv_allocator_open(dir, &c, &b, &err), -EINVAL);

    c = config(3);
    c.oui = 0;
    assert_int_equal(npiv_allocator_open(fresh_dir(), &c, &b, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "not a 24-bit IEEE OUI"));
    c = config(3);
    c.host_id = 1024;                   /* does not fit 10 bits */
    assert_int_equal(npiv_allocator_open(fresh_dir(), &c, &b, &err), -EINVAL);
    c = config(3);
    snprintf(c.iqn_prefix, sizeof(c.iqn_prefix), "iqn.2026-11.com.example:x");
    assert_int_equal(npiv_allocator_open(fresh_dir(), &c, &b, &err), -EINVAL);
    c = config(3);
    c.iqn_prefix[0] = '\0';
    assert_int_equal(npiv_allocator_open(fresh_dir(), &c, &b, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "no IQN prefix"));

    /* a damaged state file is named and refused, not overwritten */
    char path[600];
    snprintf(path, sizeof(path), "%s/npiv.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"version\": 1, \"oui\": 5176, \"host_id\": 3, \"host_id_bits\": 10, "
          "\"iqn_prefix\": \"x\", \"next_serial\": -4, \"issued_iqns\": []}", f);
    fclose(f);
    c = config(3);
    assert_int_equal(npiv_allocator_open(dir, &c, &b, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "npiv.json: \"next_serial\" must be an integer"));
}

static void test_exhausted_serial_space_is_refused(void **state)
{
    const char *dir = fresh_dir();
    struct npiv_config c = config(1);
    struct npiv_allocator *a;
    struct npiv_identity id;
    struct hv_err err;
    char path[600];

    c.host_id_bits = 20;                /* 2^14 serials per host */
    snprintf(path, sizeof(path), "%s/npiv.json", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"version\": 1, \"oui\": %u, \"host_id\": 1, \"host_id_bits\": 20, "
            "\"iqn_prefix\": \"%s\", \"next_serial\": %llu, \"issued_iqns\": []}", OUI,
            c.iqn_prefix, (1ull << 14) - 1);
    fclose(f);
    assert_int_equal(npiv_allocator_open(dir, &c, &a, &err), 0);
    assert_int_equal(npiv_identity_allocate(a, "last", NULL, &id, &err), 0);
    assert_true(id.serial == (1ull << 14) - 1);
    assert_int_equal(npiv_wwn_naa(id.fc[1].wwpn), 5);
    assert_int_equal((id.fc[1].wwpn >> 16) & 0xFFFFF, 1);     /* host id intact */
    assert_int_equal(npiv_identity_allocate(a, "one-too-many", NULL, &id, &err), -ENOSPC);
    assert_non_null(strstr(err.msg, "all 16383 identities of host id 1 are used"));
    npiv_allocator_close(a);
}

static void test_iqn_override_is_validated_and_never_issued_twice(void **state)
{
    struct npiv_allocator *a = open_alloc(fresh_dir(), 1);
    struct npiv_identity id;
    struct hv_err err;

    assert_int_equal(npiv_identity_allocate(a, "mail", "iqn.1999-01.org.corp:mail-01", &id,
                                            &err), 0);
    assert_string_equal(id.iqn, "iqn.1999-01.org.corp:mail-01");
    assert_int_equal(npiv_identity_allocate(a, "mail2", "iqn.1999-01.org.corp:mail-01", &id,
                                            &err), -EEXIST);
    assert_non_null(strstr(err.msg, "already issued"));
    assert_int_equal(npiv_identity_allocate(a, "mail3", "IQN.1999-01.org.corp:x", &id, &err),
                     -EINVAL);
    assert_non_null(strstr(err.msg, "VM 'mail3'"));
    /* names with characters an IQN cannot hold are mapped, not refused */
    assert_int_equal(npiv_identity_allocate(a, "Web_Server 1", NULL, &id, &err), 0);
    assert_string_equal(id.iqn, "iqn.2026-11.com.example.h1:vm.web-server-1");
    assert_int_equal(npiv_iscsi_name_validate(id.iqn, &err), 0);
    assert_int_equal(npiv_identity_allocate(a, "", NULL, &id, &err), -EINVAL);
    npiv_allocator_close(a);

    /* a name too long for an IQN under a long prefix is a clear error */
    struct npiv_config c = config(1);
    char *p = c.iqn_prefix + strlen(c.iqn_prefix);
    for (int i = 0; i < 15; i++, p += 10)
        memcpy(p, ".division0", 11);
    assert_int_equal(npiv_allocator_open(fresh_dir(), &c, &a, &err), 0);
    char big[NPIV_VM_NAME_MAX + 1];
    memset(big, 'x', NPIV_VM_NAME_MAX);
    big[NPIV_VM_NAME_MAX] = '\0';
    assert_int_equal(npiv_identity_allocate(a, big, NULL, &id, &err), -ENAMETOOLONG);
    assert_non_null(strstr(err.msg, "name too long for an iSCSI name"));
    assert_int_equal(npiv_identity_allocate(a, "short", NULL, &id, &err), 0);
    npiv_allocator_close(a);
}

struct thread_arg {
    const char *dir;
    uint64_t serials[40];
};

static void *allocate_in_thread(void *p)
{
    struct thread_arg *t = p;
    struct npiv_allocator *a = open_alloc(t->dir, 2);
    char name[32];
    for (int i = 0; i < 40; i++) {
        struct npiv_identity id;
        struct hv_err err;
        snprintf(name, sizeof(name), "t%p-%d", p, i);
        if (npiv_identity_allocate(a, name, NULL, &id, &err) < 0)
            abort();
        t->serials[i] = id.serial;
    }
    npiv_allocator_close(a);
    return NULL;
}

static void test_two_allocators_on_one_state_dir_never_collide(void **state)
{
    struct thread_arg args[2];
    pthread_t th[2];
    uint64_t all[80];
    const char *dir = fresh_dir();

    for (int i = 0; i < 2; i++) {
        args[i].dir = dir;
        pthread_create(&th[i], NULL, allocate_in_thread, &args[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 80; i++)
        all[i] = args[i / 40].serials[i % 40];
    assert_all_distinct(all, 80);
}

static void test_identity_json_round_trips_and_bad_input_is_refused(void **state)
{
    struct npiv_allocator *a = open_alloc(fresh_dir(), 1);
    struct npiv_identity id = alloc(a, "web1"), back;
    struct hv_err err;
    npiv_allocator_close(a);

    json_t *j = npiv_identity_to_json(&id);
    char wwpn[24];
    npiv_wwn_colon(id.fc[1].wwpn, wwpn);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(j, "fc"), "b"), "wwpn")), wwpn);
    assert_int_equal(npiv_identity_from_json(j, &back, &err), 0);
    assert_memory_equal(&id, &back, sizeof(id));

    json_t *bad = json_deep_copy(j);
    json_object_set_new(json_object_get(json_object_get(bad, "fc"), "a"), "wwpn",
                        json_string("20:00:00:24:ff:31:c9:a4"));
    assert_int_equal(npiv_identity_from_json(bad, &back, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "fc.a.wwpn 20:00:00:24:ff:31:c9:a4 is NAA 2"));
    json_decref(bad);

    bad = json_deep_copy(j);
    npiv_wwn_colon(id.fc[0].wwpn, wwpn);
    json_object_set_new(json_object_get(json_object_get(bad, "fc"), "b"), "wwnn",
                        json_string(wwpn));
    assert_int_equal(npiv_identity_from_json(bad, &back, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "the same WWN appears twice"));
    json_decref(bad);

    bad = json_deep_copy(j);
    json_object_set_new(bad, "iqn", json_string("iqn.2026-11.com.example:UPPER"));
    assert_int_equal(npiv_identity_from_json(bad, &back, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "identity of VM 'web1'"));
    json_decref(bad);

    bad = json_deep_copy(j);
    json_object_del(bad, "fc");
    assert_int_equal(npiv_identity_from_json(bad, &back, &err), -EINVAL);
    json_decref(bad);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wwn_text_forms_round_trip_and_garbage_is_refused),
        cmocka_unit_test(test_iscsi_names_follow_rfc3720),
        cmocka_unit_test(test_sets_a_and_b_are_distinct_naa5_with_the_configured_oui),
        cmocka_unit_test(test_many_vms_two_hosts_and_restarts_never_share_a_wwn),
        cmocka_unit_test(test_deleted_vm_identity_is_never_reused),
        cmocka_unit_test(test_reservation_is_on_disk_before_the_identity_is_returned),
        cmocka_unit_test(test_layout_change_and_bad_config_are_refused),
        cmocka_unit_test(test_exhausted_serial_space_is_refused),
        cmocka_unit_test(test_iqn_override_is_validated_and_never_issued_twice),
        cmocka_unit_test(test_two_allocators_on_one_state_dir_never_collide),
        cmocka_unit_test(test_identity_json_round_trips_and_bad_input_is_refused),
    };
    hv_log_set_level(HV_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
