/* Unit tests for the VM registry: what is saved comes back, whole, and a
 * crash in the middle of a save never leaves a torn definition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hv.h"
#include "testlib.h"

static struct hv_disk_config *disk(enum hv_disk_kind kind, const char *path, bool is_read_only)
{
    struct hv_disk_config *d = calloc(1, sizeof(*d));
    assert_non_null(d);
    d->kind = kind;
    snprintf(d->path, sizeof(d->path), "%s", path);
    d->is_read_only = is_read_only;
    return d;
}

static void make_full_vm(struct hv_vm_config *vm, const char *name)
{
    struct hv_err err = {0};
    const char *initiators[] = {"iqn.2008-11.org.linux-kvm:web", "IQN.1993-08.org.debian:01:abc"};

    assert_int_equal(hv_vm_config_init(vm, name, &err), 0);
    assert_int_equal(hv_vm_config_set_initiators(vm, initiators, 2, &err), 0);
    assert_int_equal(hv_chap_parse("guest:guest-secret-12", &vm->chap, &err), 0);
    assert_int_equal(hv_chap_parse("target:target-secret-34", &vm->mutual_chap, &err), 0);
    vm->controller_count = 3;
    vm->disks[0][0] = disk(HV_DISK_VHD, "/srv/vm/web-boot.vhd", false);
    vm->disks[2][63] = disk(HV_DISK_RAW, "/srv/vm/web-data.img", true);
}

static void test_saved_vm_comes_back_with_disks_acl_and_chap(void **state)
{
    struct hv_registry reg;
    struct hv_err err = {0};
    struct hv_vm_config vm;
    struct hv_vm_config *list = NULL;
    int count = -1;

    assert_int_equal(hv_registry_open(&reg, t_path("state1"), &err), 0);
    make_full_vm(&vm, "web");
    assert_int_equal(hv_registry_save(&reg, &vm, &err), 0);

    /* A second registry on the same directory: what a restarted daemon sees. */
    struct hv_registry again;
    assert_int_equal(hv_registry_open(&again, t_path("state1"), &err), 0);
    assert_int_equal(hv_registry_load(&again, &list, &count, &err), 0);
    assert_int_equal(count, 1);
    assert_string_equal(list[0].name, "web");
    assert_memory_equal(list[0].uuid, vm.uuid, 16);
    assert_int_equal(list[0].initiator_count, 2);
    assert_string_equal(list[0].initiators[0], "iqn.2008-11.org.linux-kvm:web");
    /* iSCSI names are case-insensitive: stored lowercased. */
    assert_string_equal(list[0].initiators[1], "iqn.1993-08.org.debian:01:abc");
    assert_string_equal(list[0].chap.user, "guest");
    assert_string_equal(list[0].chap.secret, "guest-secret-12");
    assert_string_equal(list[0].mutual_chap.user, "target");
    assert_string_equal(list[0].mutual_chap.secret, "target-secret-34");
    assert_int_equal(list[0].controller_count, 3);
    assert_non_null(list[0].disks[0][0]);
    assert_int_equal(list[0].disks[0][0]->kind, HV_DISK_VHD);
    assert_string_equal(list[0].disks[0][0]->path, "/srv/vm/web-boot.vhd");
    assert_false(list[0].disks[0][0]->is_read_only);
    assert_non_null(list[0].disks[2][63]);
    assert_int_equal(list[0].disks[2][63]->kind, HV_DISK_RAW);
    assert_true(list[0].disks[2][63]->is_read_only);
    for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
        for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++)
            if (!((c == 0 && s == 0) || (c == 2 && s == 63)))
                assert_null(list[0].disks[c][s]);
    hv_registry_free_list(list, count);
    hv_vm_config_free(&vm);
}

static void test_state_files_are_private(void **state)
{
    struct hv_registry reg;
    struct hv_err err = {0};
    struct hv_vm_config vm;
    char path[4096 + 80];
    struct stat st;

    assert_int_equal(hv_registry_open(&reg, t_path("state-private"), &err), 0);
    make_full_vm(&vm, "secret");
    assert_int_equal(hv_registry_save(&reg, &vm, &err), 0);
    hv_registry_path(&reg, "secret", path);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 077, 0);       /* holds CHAP secrets */
    assert_int_equal(stat(t_path("state-private"), &st), 0);
    assert_int_equal(st.st_mode & 077, 0);
    hv_vm_config_free(&vm);
}

static void test_load_sorts_by_name_and_remove_is_durable(void **state)
{
    struct hv_registry reg;
    struct hv_err err = {0};
    const char *names[] = {"zeta", "alpha", "mid-1"};
    struct hv_vm_config *list = NULL;
    int count = 0;

    assert_int_equal(hv_registry_open(&reg, t_path("state2"), &err), 0);
    for (int i = 0; i < 3; i++) {
        struct hv_vm_config vm;
        assert_int_equal(hv_vm_config_init(&vm, names[i], &err), 0);
        assert_int_equal(hv_registry_save(&reg, &vm, &err), 0);
        hv_vm_config_free(&vm);
    }
    assert_int_equal(hv_registry_load(&reg, &list, &count, &err), 0);
    assert_int_equal(count, 3);
    assert_string_equal(list[0].name, "alpha");
    assert_string_equal(list[1].name, "mid-1");
    assert_string_equal(list[2].name, "zeta");
    /* Default ACL: QEMU's initiator names for this VM, by name and by UUID. */
    assert_string_equal(list[0].initiators[0], "iqn.2008-11.org.linux-kvm:alpha");
    char uuid_text[37], by_uuid[128];
    hv_uuid_format(list[0].uuid, uuid_text);
    snprintf(by_uuid, sizeof(by_uuid), "iqn.2008-11.org.linux-kvm:%s", uuid_text);
    assert_true(hv_vm_config_allows(&list[0], by_uuid));
    hv_registry_free_list(list, count);

    assert_int_equal(hv_registry_remove(&reg, "mid-1", &err), 0);
    assert_int_equal(hv_registry_remove(&reg, "never-was", &err), 0);
    assert_int_equal(hv_registry_load(&reg, &list, &count, &err), 0);
    assert_int_equal(count, 2);
    assert_string_equal(list[0].name, "alpha");
    assert_string_equal(list[1].name, "zeta");
    hv_registry_free_list(list, count);
}

static void write_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void test_torn_temp_file_of_interrupted_save_is_ignored(void **state)
{
    struct hv_registry reg;
    struct hv_err err = {0};
    struct hv_vm_config vm;
    struct hv_vm_config *list = NULL;
    int count = 0;
    char path[4096 + 80];
    char tmp[4096 + 100];

    assert_int_equal(hv_registry_open(&reg, t_path("state3"), &err), 0);
    make_full_vm(&vm, "db");
    assert_int_equal(hv_registry_save(&reg, &vm, &err), 0);
    /* A crash after writing half of the next version to the temp file and
     * before the rename: the old definition must still be what loads. */
    hv_registry_path(&reg, "db", path);
    snprintf(tmp, sizeof(tmp), "%s.tmp.4242", path);
    write_text(tmp, "{\"version\": 1, \"name\": \"db\", \"uuid\": \"");
    assert_int_equal(hv_registry_load(&reg, &list, &count, &err), 0);
    assert_int_equal(count, 1);
    assert_string_equal(list[0].name, "db");
    assert_non_null(list[0].disks[0][0]);
    hv_registry_free_list(list, count);

    /* Saving again replaces the file whole (and no temp file of ours stays). */
    vm.disks[1][5] = disk(HV_DISK_VHD, "/srv/vm/db-log.vhd", false);
    assert_int_equal(hv_registry_save(&reg, &vm, &err), 0);
    assert_int_equal(hv_registry_load(&reg, &list, &count, &err), 0);
    assert_int_equal(count, 1);
    assert_non_null(list[0].disks[1][5]);
    assert_string_equal(list[0].disks[1][5]->path, "/srv/vm/db-log.vhd");
    hv_registry_free_list(list, count);
    hv_vm_config_free(&vm);
}

static void test_damaged_definition_fails_load_naming_the_file(void **state)
{
    struct hv_registry reg;
    struct hv_err err = {0};
    struct hv_vm_config *list = NULL;
    int count = 0;
    char path[4096 + 80];

    assert_int_equal(hv_registry_open(&reg, t_path("state4"), &err), 0);
    hv_registry_path(&reg, "broken", path);
    write_text(path, "{\"version\": 1, \"name\": \"broken\"");
    assert_int_equal(hv_registry_load(&reg, &list, &count, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "broken.json"));
    assert_null(list);

    /* Valid JSON, wrong content: a disk path that is not absolute. */
    write_text(path, "{\"version\":1,\"name\":\"broken\",\"uuid\":"
               "\"0f8fad5b-d9cb-469f-a165-70867728950e\",\"initiators\":"
               "[\"iqn.2008-11.org.linux-kvm:broken\"],\"controllers\":[{\"index\":0,"
               "\"disks\":[{\"slot\":0,\"kind\":\"vhd\",\"path\":\"relative.vhd\"}]}]}");
    hv_err_clear(&err);
    assert_int_equal(hv_registry_load(&reg, &list, &count, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "broken.json"));
    assert_non_null(strstr(err.msg, "not absolute"));

    /* A file whose content names another VM. */
    write_text(path, "{\"version\":1,\"name\":\"other\",\"uuid\":"
               "\"0f8fad5b-d9cb-469f-a165-70867728950e\",\"initiators\":"
               "[\"iqn.2008-11.org.linux-kvm:other\"],\"controllers\":[{\"index\":0,"
               "\"disks\":[]}]}");
    hv_err_clear(&err);
    assert_int_equal(hv_registry_load(&reg, &list, &count, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "file name says 'broken'"));
}

static void test_unknown_keys_survive_load_and_save(void **state)
{
    struct hv_registry reg;
    struct hv_err err = {0};
    struct hv_vm_config *list = NULL;
    int count = 0;
    char path[4096 + 80];
    json_t *obj = NULL;

    /* What a later module (agents, SAN identities) might have stored. */
    assert_int_equal(hv_registry_open(&reg, t_path("state5"), &err), 0);
    hv_registry_path(&reg, "future", path);
    write_text(path, "{\"version\":1,\"name\":\"future\",\"uuid\":"
               "\"0f8fad5b-d9cb-469f-a165-70867728950e\",\"initiators\":"
               "[\"iqn.2008-11.org.linux-kvm:future\"],\"controllers\":[{\"index\":0,"
               "\"disks\":[]}],\"agent\":{\"kind\":\"qemu-ga\",\"path\":\"/run/ga.sock\"}}");
    assert_int_equal(hv_registry_load(&reg, &list, &count, &err), 0);
    assert_int_equal(count, 1);
    assert_int_equal(hv_registry_save(&reg, &list[0], &err), 0);
    hv_registry_free_list(list, count);
    assert_int_equal(hv_json_read_file(path, &obj, &err), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(obj, "agent"), "kind")),
                        "qemu-ga");
    json_decref(obj);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_saved_vm_comes_back_with_disks_acl_and_chap),
        cmocka_unit_test(test_state_files_are_private),
        cmocka_unit_test(test_load_sorts_by_name_and_remove_is_durable),
        cmocka_unit_test(test_torn_temp_file_of_interrupted_save_is_ignored),
        cmocka_unit_test(test_damaged_definition_fails_load_naming_the_file),
        cmocka_unit_test(test_unknown_keys_survive_load_and_save),
    };
    umask(077);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
