/* Unit tests for the VM definition: names, access rules, CHAP and targets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "hv.h"

static void test_vm_names_are_lowercase_iscsi_safe(void **state)
{
    struct hv_err err = {0};
    assert_int_equal(hv_vm_name_check("web-01", &err), 0);
    assert_int_equal(hv_vm_name_check("0db", &err), 0);
    assert_int_equal(hv_vm_name_check("", &err), -EINVAL);
    assert_int_equal(hv_vm_name_check("-web", &err), -EINVAL);
    assert_int_equal(hv_vm_name_check("Web", &err), -EINVAL);
    assert_int_equal(hv_vm_name_check("web.c0", &err), -EINVAL);
    assert_int_equal(hv_vm_name_check("a/b", &err), -EINVAL);
    assert_non_null(strstr(err.msg, "'/'"));
    char long_name[80];
    memset(long_name, 'a', 64);
    long_name[64] = '\0';
    assert_int_equal(hv_vm_name_check(long_name, &err), -EINVAL);
}

static void test_iscsi_names_are_checked_and_lowercased(void **state)
{
    struct hv_err err = {0};
    char a[] = "IQN.2008-11.org.Linux-KVM:Guest";
    char b[] = "eui.0123456789ABCDEF";
    char c[] = "naa.60014055f0a1b2c3d4e5f60718293a4b";
    char bad1[] = "iqn.08-11.org.x";
    char bad2[] = "iqn.2008-11.org.x y";
    char bad3[] = "eui.123";
    char bad4[] = "guest";
    assert_int_equal(hv_iscsi_name_check(a, &err), 0);
    assert_string_equal(a, "iqn.2008-11.org.linux-kvm:guest");
    assert_int_equal(hv_iscsi_name_check(b, &err), 0);
    assert_int_equal(hv_iscsi_name_check(c, &err), 0);
    assert_int_equal(hv_iscsi_name_check(bad1, &err), -EINVAL);
    assert_int_equal(hv_iscsi_name_check(bad2, &err), -EINVAL);
    assert_int_equal(hv_iscsi_name_check(bad3, &err), -EINVAL);
    assert_int_equal(hv_iscsi_name_check(bad4, &err), -EINVAL);
}

static void test_chap_secret_shorter_than_96_bits_is_refused(void **state)
{
    struct hv_err err = {0};
    struct hv_chap chap;
    assert_int_equal(hv_chap_parse("user:twelve-bytes", &chap, &err), 0);
    assert_string_equal(chap.user, "user");
    assert_string_equal(chap.secret, "twelve-bytes");
    assert_int_equal(hv_chap_parse("user:a:colon-in-secret", &chap, &err), 0);
    assert_string_equal(chap.secret, "a:colon-in-secret");
    assert_int_equal(hv_chap_parse("user:short", &chap, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "96 bits"));
    assert_int_equal(hv_chap_parse("nosecret", &chap, &err), -EINVAL);
    assert_int_equal(hv_chap_parse(":secret-secret", &chap, &err), -EINVAL);
}

static void test_target_names_round_trip(void **state)
{
    char target[HV_ISCSI_NAME_MAX + 1];
    char name[HV_NAME_MAX + 1];
    int controller = -1;

    hv_target_name("web-01", 3, target);
    assert_string_equal(target, "iqn.2026-11.org.hvstor:web-01.c3");
    assert_int_equal(hv_target_parse(target, name, &controller), 0);
    assert_string_equal(name, "web-01");
    assert_int_equal(controller, 3);
    assert_int_equal(hv_target_parse("IQN.2026-11.ORG.HVSTOR:WEB.C1", name, &controller), 0);
    assert_string_equal(name, "web");
    assert_int_equal(controller, 1);
    assert_int_equal(hv_target_parse("iqn.2026-11.org.hvstor:web.c4", name, &controller),
                     -ENOENT);
    assert_int_equal(hv_target_parse("iqn.2026-11.org.hvstor:web", name, &controller), -ENOENT);
    assert_int_equal(hv_target_parse("iqn.2003-01.org.linux:web.c0", name, &controller), -ENOENT);
    assert_int_equal(hv_target_parse("iqn.2026-11.org.hvstor:.c0", name, &controller), -ENOENT);
}

static void test_only_listed_initiators_are_allowed(void **state)
{
    struct hv_err err = {0};
    struct hv_vm_config vm;
    const char *names[] = {"iqn.1994-05.com.redhat:node1", "iqn.1994-05.com.redhat:node1",
                           "iqn.1994-05.com.redhat:node2"};

    assert_int_equal(hv_vm_config_init(&vm, "cluster", &err), 0);
    assert_true(hv_vm_config_allows(&vm, "iqn.2008-11.org.linux-kvm:cluster"));
    assert_false(hv_vm_config_allows(&vm, "iqn.2008-11.org.linux-kvm"));
    assert_int_equal(hv_vm_config_set_initiators(&vm, names, 3, &err), 0);
    assert_int_equal(vm.initiator_count, 2);                 /* duplicates folded */
    assert_true(hv_vm_config_allows(&vm, "IQN.1994-05.com.redhat:NODE2"));
    assert_false(hv_vm_config_allows(&vm, "iqn.2008-11.org.linux-kvm:cluster"));
    assert_false(hv_vm_config_allows(&vm, "iqn.1994-05.com.redhat:node"));
    assert_int_equal(hv_vm_config_set_initiators(&vm, names, 0, &err), -EINVAL);
    assert_int_equal(vm.initiator_count, 2);                 /* unchanged on error */
    hv_vm_config_free(&vm);
}

static void test_mutual_chap_needs_one_way_and_a_different_secret(void **state)
{
    struct hv_err err = {0};
    struct hv_vm_config vm;

    assert_int_equal(hv_vm_config_init(&vm, "m", &err), 0);
    assert_int_equal(hv_chap_parse("t:target-secret-1", &vm.mutual_chap, &err), 0);
    assert_int_equal(hv_vm_config_validate(&vm, &err), -EINVAL);
    assert_int_equal(hv_chap_parse("i:target-secret-1", &vm.chap, &err), 0);
    assert_int_equal(hv_vm_config_validate(&vm, &err), -EINVAL);
    assert_int_equal(hv_chap_parse("i:initiator-secret", &vm.chap, &err), 0);
    assert_int_equal(hv_vm_config_validate(&vm, &err), 0);
    hv_vm_config_free(&vm);
}

static void test_json_from_a_newer_version_is_refused(void **state)
{
    struct hv_err err = {0};
    struct hv_vm_config vm;
    json_t *obj = json_pack("{s:i, s:s, s:s, s:[s], s:[{s:i, s:[]}]}", "version", 2, "name",
                            "x", "uuid", "0f8fad5b-d9cb-469f-a165-70867728950e", "initiators",
                            "iqn.2008-11.org.linux-kvm:x", "controllers", "index", 0, "disks");
    assert_int_equal(hv_vm_config_from_json(obj, "x.json", &vm, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "version 2"));
    json_object_set_new(obj, "version", json_integer(1));
    assert_int_equal(hv_vm_config_from_json(obj, "x.json", &vm, &err), 0);
    hv_vm_config_free(&vm);
    json_decref(obj);
}

/* A local SCSI disk passed through with SG_IO is a "dev" slot with the
 * disk's designator (and --full-scsi); a "dev" slot without one is the raw
 * path, as before. Both survive the round trip through JSON. */
static void test_dev_slot_keeps_its_designator(void **state)
{
    struct hv_err err = {0};
    struct hv_vm_config vm;
    struct hv_vm_config back;
    json_t *obj;
    (void)state;

    assert_int_equal(hv_vm_config_init(&vm, "db", &err), 0);
    vm.disks[0][0] = calloc(1, sizeof(struct hv_disk_config));
    vm.disks[0][1] = calloc(1, sizeof(struct hv_disk_config));
    assert_non_null(vm.disks[0][0]);
    assert_non_null(vm.disks[0][1]);
    vm.disks[0][0]->kind = HV_DISK_DEV;
    snprintf(vm.disks[0][0]->path, sizeof(vm.disks[0][0]->path), "/dev/sdb");
    snprintf(vm.disks[0][0]->designator, sizeof(vm.disks[0][0]->designator),
             "naa.33333330000007d0");
    vm.disks[0][0]->is_full_scsi = true;
    vm.disks[0][1]->kind = HV_DISK_DEV;
    snprintf(vm.disks[0][1]->path, sizeof(vm.disks[0][1]->path), "/dev/loop3");
    obj = hv_vm_config_to_json(&vm);
    assert_non_null(obj);
    assert_int_equal(hv_vm_config_from_json(obj, "test", &back, &err), 0);
    assert_int_equal(back.disks[0][0]->kind, HV_DISK_DEV);
    assert_string_equal(back.disks[0][0]->designator, "naa.33333330000007d0");
    assert_true(back.disks[0][0]->is_full_scsi);
    assert_int_equal(back.disks[0][1]->kind, HV_DISK_DEV);
    assert_string_equal(back.disks[0][1]->designator, "");
    assert_false(back.disks[0][1]->is_full_scsi);
    json_decref(obj);
    hv_vm_config_free(&back);
    hv_vm_config_free(&vm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vm_names_are_lowercase_iscsi_safe),
        cmocka_unit_test(test_iscsi_names_are_checked_and_lowercased),
        cmocka_unit_test(test_chap_secret_shorter_than_96_bits_is_refused),
        cmocka_unit_test(test_target_names_round_trip),
        cmocka_unit_test(test_only_listed_initiators_are_allowed),
        cmocka_unit_test(test_mutual_chap_needs_one_way_and_a_different_secret),
        cmocka_unit_test(test_json_from_a_newer_version_is_refused),
        cmocka_unit_test(test_dev_slot_keeps_its_designator),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
