/*
 * npiv's Fibre Channel side against a fake sysfs tree that behaves like one
 * fabric (fake_fc.h): vport create/delete strings, HBA refusals, the Online
 * wait, and the zoning/masking check.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "fake_fc.h"
#include "npiv_internal.h"
#include "testlib.h"

#define TARGET_WWPN 0x500a098000001111ull
#define OTHER_INITIATOR 0x5000000000000999ull

static struct fake_fc fake;
static int root_counter;

static const struct npiv_wait_options fast = {
    .online_timeout_ms = 2000, .settle_ms = 150, .poll_ms = 2,
};

/* A VM identity made by hand: these tests are about sysfs, not allocation. */
static struct npiv_identity vm(void)
{
    struct npiv_identity id;
    memset(&id, 0, sizeof(id));
    snprintf(id.vm_name, sizeof(id.vm_name), "web1");
    snprintf(id.iqn, sizeof(id.iqn), "iqn.2026-11.com.example.h1:vm.web1");
    id.serial = 7;
    id.fc[NPIV_SET_A].wwnn = 0x5001438000000070ull;
    id.fc[NPIV_SET_A].wwpn = 0x5001438000000071ull;
    id.fc[NPIV_SET_B].wwnn = 0x5001438000000072ull;
    id.fc[NPIV_SET_B].wwpn = 0x5001438000000073ull;
    return id;
}

static int setup(void **state)
{
    char root[512];
    snprintf(root, sizeof(root), "%s/sys%d", t_tmpdir(), root_counter++);
    fake_init(&fake, root);
    return 0;
}

static int teardown(void **state)
{
    fake_stop(&fake);
    return 0;
}

static bool host_with_wwpn_exists(uint64_t wwpn)
{
    char cmd[1024], out[64];
    snprintf(cmd, sizeof(cmd), "grep -l -x 0x%" PRIx64 " %s/class/fc_host/*/port_name 2>/dev/null"
             " | wc -l", wwpn, fake.root);
    t_run(out, sizeof(out), "%s", cmd);
    return atoi(out) > 0;
}

static unsigned read_in_use(unsigned host_no)
{
    char out[32];
    t_run(out, sizeof(out), "cat %s/class/fc_host/host%u/npiv_vports_inuse", fake.root, host_no);
    return (unsigned)atoi(out);
}

static void test_vport_create_and_delete_write_the_kernel_strings(void **state)
{
    struct npiv_identity id = vm();
    struct npiv_vport v;
    struct hv_err err;

    fake_add_hba(&fake, 5, "NPort (fabric via point-to-point)", 64, 3);
    fake_start(&fake);

    assert_int_equal(npiv_vport_bring_up(fake.root, &id.fc[NPIV_SET_A], &fast, &v, &err), 0);
    assert_string_equal(fake_log_line(&fake, 0),
                        "host5 vport_create 5001438000000071:5001438000000070");
    assert_true(v.has_host);
    assert_int_equal(v.parent_host_no, 5);
    assert_string_equal(v.port_state, "Online");
    assert_true(host_with_wwpn_exists(id.fc[NPIV_SET_A].wwpn));
    assert_int_equal(read_in_use(5), 4);

    assert_int_equal(npiv_vport_delete(&v, &err), 0);
    assert_string_equal(fake_log_line(&fake, 1),
                        "host5 vport_delete 5001438000000071:5001438000000070");
    assert_int_equal(fake_log_count(&fake), 2);         /* no refusal logged by the "kernel" */
    assert_false(host_with_wwpn_exists(id.fc[NPIV_SET_A].wwpn));
    assert_int_equal(read_in_use(5), 3);
}

static void test_hba_list_explains_each_hba_and_pick_takes_the_usable_one(void **state)
{
    struct npiv_hba *list, pick;
    size_t n;
    struct hv_err err;

    fake_add_hba(&fake, 3, "LPort (private loop)", 64, 0);
    fake_add_hba(&fake, 4, "NPort (fabric via point-to-point)", 0, 0)->has_vport_create = false;
    fake_add_hba(&fake, 5, "NPort (fabric via point-to-point)", 8, 8);
    fake_add_hba(&fake, 6, "NPort (fabric via point-to-point)", 8, 1);
    fake_start(&fake);

    assert_int_equal(npiv_hba_list(fake.root, &list, &n, &err), 0);
    assert_int_equal(n, 4);
    assert_string_equal(list[0].name, "host3");
    assert_false(list[0].can_create_vport);
    assert_non_null(strstr(list[0].why_not, "port_type is 'LPort (private loop)'"));
    assert_false(list[1].can_create_vport);
    assert_non_null(strstr(list[1].why_not, "no vport_create"));
    assert_false(list[2].can_create_vport);
    assert_non_null(strstr(list[2].why_not,
                           "no NPIV vports left (npiv_vports_inuse 8 of max_npiv_vports 8)"));
    assert_true(list[3].can_create_vport);
    assert_int_equal(list[3].max_vports, 8);
    assert_int_equal(list[3].vports_in_use, 1);
    assert_true(list[3].wwpn == 0x21000024ff000006ull);
    free(list);

    assert_int_equal(npiv_hba_pick(fake.root, 0, &pick, &err), 0);
    assert_string_equal(pick.name, "host6");
    /* another fabric: nobody qualifies, and the message says why for each */
    assert_int_equal(npiv_hba_pick(fake.root, 0x100000051e0000ffull, &pick, &err), -ENODEV);
    assert_non_null(strstr(err.msg, "host6: on fabric 10:00:00:05:1e:00:00:01, not "
                                    "10:00:00:05:1e:00:00:ff"));
    assert_non_null(strstr(err.msg, "host3: port_type"));
}

static void test_refuses_hba_without_npiv_vports_left(void **state)
{
    struct npiv_identity id = vm();
    struct npiv_hba hba;
    struct npiv_vport v;
    struct hv_err err;

    fake_add_hba(&fake, 5, "NPort (fabric via point-to-point)", 2, 2);
    fake_start(&fake);

    assert_int_equal(npiv_vport_bring_up(fake.root, &id.fc[0], &fast, &v, &err), -ENODEV);
    assert_non_null(strstr(err.msg, "no NPIV vports left (npiv_vports_inuse 2 of "
                                    "max_npiv_vports 2)"));
    /* and asked directly for that HBA, the errno says what is short */
    memset(&hba, 0, sizeof(hba));
    snprintf(hba.name, sizeof(hba.name), "host5");
    hba.host_no = 5;
    assert_int_equal(npiv_vport_create(fake.root, &hba, &id.fc[0], &v, &err), -ENOSPC);
    assert_non_null(strstr(err.msg, "cannot create vport 50:01:43:80:00:00:00:71"));
    npiv_sleep_ms(20);
    assert_int_equal(fake_log_count(&fake), 0);          /* nothing was written */
}

static void test_refuses_hba_whose_port_type_cannot_do_npiv(void **state)
{
    struct npiv_identity id = vm();
    struct npiv_hba hba;
    struct npiv_vport v;
    struct hv_err err;

    fake_add_hba(&fake, 2, "Point-To-Point (direct nport connection)", 64, 0);
    fake_start(&fake);

    assert_int_equal(npiv_vport_bring_up(fake.root, &id.fc[0], &fast, &v, &err), -ENODEV);
    assert_non_null(strstr(err.msg, "host2: port_type is 'Point-To-Point (direct nport "
                                    "connection)'; NPIV needs an N_Port logged in to a fabric"));
    memset(&hba, 0, sizeof(hba));
    snprintf(hba.name, sizeof(hba.name), "host2");
    hba.host_no = 2;
    assert_int_equal(npiv_vport_create(fake.root, &hba, &id.fc[0], &v, &err), -EOPNOTSUPP);
    npiv_sleep_ms(20);
    assert_int_equal(fake_log_count(&fake), 0);
}

static void test_online_wait_times_out_cleanly_and_deletes_the_vport(void **state)
{
    struct npiv_identity id = vm();
    struct npiv_wait_options opt = fast;
    struct npiv_vport v;
    struct hv_err err;

    fake.online_delay_ms = -1;          /* the fabric never lets it log in */
    fake_add_hba(&fake, 5, "NPort (fabric via point-to-point)", 64, 0);
    fake_start(&fake);

    opt.online_timeout_ms = 150;
    uint64_t start = hv_now_ns();
    assert_int_equal(npiv_vport_bring_up(fake.root, &id.fc[0], &opt, &v, &err), -ETIMEDOUT);
    uint64_t took_ms = (hv_now_ns() - start) / 1000000;
    assert_true(took_ms >= 150 && took_ms < 3000);
    assert_non_null(strstr(err.msg, "vport 50:01:43:80:00:00:00:71 on host5 did not come "
                                    "Online within 150 ms"));
    assert_non_null(strstr(err.msg, "port_state 'Linkdown'"));
    assert_non_null(strstr(err.msg, "the vport was deleted again"));
    assert_string_equal(fake_log_line(&fake, 0),
                        "host5 vport_create 5001438000000071:5001438000000070");
    assert_string_equal(fake_log_line(&fake, 1),
                        "host5 vport_delete 5001438000000071:5001438000000070");
    assert_false(host_with_wwpn_exists(id.fc[0].wwpn));
    assert_int_equal(read_in_use(5), 0);
}

static void test_fabric_rejection_fails_fast_with_the_vport_state(void **state)
{
    struct npiv_identity id = vm();
    struct npiv_vport v;
    struct hv_err err;

    fake.online_delay_ms = -1;
    fake.stuck_vport_state = "Fabric Rejected WWN";
    fake_add_hba(&fake, 5, "NPort (fabric via point-to-point)", 64, 0);
    fake_start(&fake);

    uint64_t start = hv_now_ns();
    assert_int_equal(npiv_vport_bring_up(fake.root, &id.fc[0], &fast, &v, &err), -EIO);
    assert_true((hv_now_ns() - start) / 1000000 < 1000);      /* not the 2 s timeout */
    assert_non_null(strstr(err.msg, "vport_state 'Fabric Rejected WWN'"));
    assert_false(host_with_wwpn_exists(id.fc[0].wwpn));
}

static void test_second_vport_with_the_same_wwpn_is_refused(void **state)
{
    struct npiv_identity id = vm();
    struct npiv_vport v1, v2;
    struct hv_err err;

    fake_add_hba(&fake, 5, "NPort (fabric via point-to-point)", 64, 0);
    fake_start(&fake);
    assert_int_equal(npiv_vport_bring_up(fake.root, &id.fc[0], &fast, &v1, &err), 0);
    assert_int_equal(npiv_vport_bring_up(fake.root, &id.fc[0], &fast, &v2, &err), -EBUSY);
    assert_non_null(strstr(err.msg, "WWPN 50:01:43:80:00:00:00:71 already exists (host20)"));
    assert_int_equal(npiv_vport_delete(&v1, &err), 0);
}

static void test_rports_and_luns_are_listed_per_vport_host(void **state)
{
    struct npiv_identity id = vm();
    struct npiv_vport v;
    struct npiv_rport *rp;
    uint64_t *luns;
    size_t n;
    struct hv_err err;

    fake_add_hba(&fake, 5, "NPort (fabric via point-to-point)", 64, 0);
    struct fake_target *t = fake_add_target(&fake, TARGET_WWPN);
    fake_zone(t, id.fc[0].wwpn);
    fake_mask(t, id.fc[0].wwpn, 0);
    fake_mask(t, id.fc[0].wwpn, 3);
    fake_mask(t, OTHER_INITIATOR, 4);
    fake_start(&fake);

    assert_int_equal(npiv_vport_bring_up(fake.root, &id.fc[0], &fast, &v, &err), 0);
    npiv_sleep_ms(20);
    assert_int_equal(npiv_rport_list(fake.root, v.host_no, &rp, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_true(rp[0].wwpn == TARGET_WWPN);
    assert_true(rp[0].is_target);
    assert_string_equal(rp[0].port_state, "Online");
    assert_int_equal(rp[0].scsi_target_id, 0);
    assert_int_equal(npiv_lun_list(fake.root, v.host_no, 0, &luns, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_true(luns[0] == 0 && luns[1] == 3);
    free(luns);
    free(rp);
    /* the parent's host sees none of it */
    assert_int_equal(npiv_rport_list(fake.root, 5, &rp, &n, &err), 0);
    assert_int_equal(n, 0);
    free(rp);
    assert_int_equal(npiv_vport_delete(&v, &err), 0);
}

/* What serves a LUN once the vport stays up: its H:C:T:L, the block device
 * under it, the kernel's copy of VPD 0x83; and a vport left behind by a dead
 * daemon is found again instead of refused. */
static void test_find_lun_names_the_block_device_and_its_vpd(void **state)
{
    struct npiv_identity id = vm();
    struct npiv_vport v, again;
    struct npiv_lun_addr a;
    struct hv_err err;
    uint8_t page[64];
    size_t len;
    char name[32];

    fake_add_hba(&fake, 5, "NPort (fabric via point-to-point)", 64, 0);
    struct fake_target *t = fake_add_target(&fake, TARGET_WWPN);
    fake_zone(t, id.fc[0].wwpn);
    fake_mask_disk(t, id.fc[0].wwpn, 2, "sdq", "600a0980000000000000000000001234");
    fake_mask(t, id.fc[0].wwpn, 5);                 /* seen, but no disk scanned */
    fake_start(&fake);

    assert_int_equal(npiv_vport_bring_up(fake.root, &id.fc[0], &fast, &v, &err), 0);
    assert_int_equal(npiv_vport_find_lun(&v, TARGET_WWPN, 2, &fast, "VM 'web1'", &a, &err), 0);
    assert_int_equal(a.host_no, v.host_no);
    assert_int_equal(a.target_id, 0);
    assert_true(a.lun == 2);
    assert_int_equal(npiv_lun_block_name(fake.root, &a, name, sizeof(name), &err), 0);
    assert_string_equal(name, "sdq");
    assert_int_equal(npiv_lun_vpd83(fake.root, &a, page, sizeof(page), &len, &err), 0);
    assert_int_equal(len, 24);
    assert_int_equal(page[1], 0x83);
    assert_int_equal(page[8], 0x60);
    assert_int_equal(page[23], 0x34);

    assert_int_equal(npiv_vport_find_lun(&v, TARGET_WWPN, 5, &fast, "VM 'web1'", &a, &err), 0);
    assert_int_equal(npiv_lun_block_name(fake.root, &a, name, sizeof(name), &err), -ENOENT);
    assert_int_equal(npiv_vport_find_lun(&v, TARGET_WWPN, 7, &fast, "VM 'web1'", &a, &err),
                     -ENOENT);
    assert_non_null(strstr(err.msg, "not masked: LUN 7"));
    assert_non_null(strstr(err.msg, "VM 'web1'"));

    assert_int_equal(npiv_vport_find(fake.root, &id.fc[0], &again, &err), 0);
    assert_string_equal(again.parent, "host5");
    assert_true(again.has_host && again.host_no == v.host_no);
    assert_int_equal(npiv_vport_find(fake.root, &id.fc[1], &again, &err), -ENOENT);
    assert_int_equal(npiv_vport_delete(&v, &err), 0);
}

static void test_check_access_passes_with_both_sets_zoned_and_masked(void **state)
{
    struct npiv_identity id = vm();
    struct hv_err err;

    fake_add_hba(&fake, 5, "NPort (fabric via point-to-point)", 1, 0);   /* one at a time */
    struct fake_target *t = fake_add_target(&fake, TARGET_WWPN);
    for (int s = 0; s < 2; s++) {
        fake_zone(t, id.fc[s].wwpn);
        fake_mask(t, id.fc[s].wwpn, 3);
    }
    fake_start(&fake);

    hv_err_clear(&err);
    assert_int_equal(npiv_check_access(fake.root, &id, TARGET_WWPN, 3, false, &fast, &err), 0);
    assert_string_equal(fake_log_line(&fake, 0),
                        "host5 vport_create 5001438000000071:5001438000000070");
    assert_string_equal(fake_log_line(&fake, 1),
                        "host5 vport_delete 5001438000000071:5001438000000070");
    assert_string_equal(fake_log_line(&fake, 2),
                        "host5 vport_create 5001438000000073:5001438000000072");
    assert_string_equal(fake_log_line(&fake, 3),
                        "host5 vport_delete 5001438000000073:5001438000000072");
    assert_int_equal(fake_log_count(&fake), 4);
    assert_int_equal(read_in_use(5), 0);
}

static void test_check_access_refuses_lun_whose_target_port_is_not_zoned(void **state)
{
    struct npiv_identity id = vm();
    struct hv_err err;

    fake_add_hba(&fake, 5, "NPort (fabric via point-to-point)", 64, 0);
    struct fake_target *t = fake_add_target(&fake, TARGET_WWPN);
    fake_zone(t, OTHER_INITIATOR);                   /* zoned, but to someone else */
    fake_mask(t, id.fc[0].wwpn, 3);                  /* masking alone is not enough */
    struct fake_target *t2 = fake_add_target(&fake, 0x500a098000002222ull);
    fake_zone(t2, id.fc[0].wwpn);
    fake_start(&fake);

    assert_int_equal(npiv_check_access(fake.root, &id, TARGET_WWPN, 3, false, &fast, &err),
                     -EHOSTUNREACH);
    assert_non_null(strstr(err.msg, "not zoned: target port 50:0a:09:80:00:00:11:11 is not "
                                    "visible to vport 50:01:43:80:00:00:00:71"));
    assert_non_null(strstr(err.msg, "address set A"));
    assert_non_null(strstr(err.msg, "target ports it sees: 50:0a:09:80:00:00:22:22"));
    assert_false(host_with_wwpn_exists(id.fc[0].wwpn));         /* torn down */
    assert_int_equal(read_in_use(5), 0);
}

static void test_check_access_refuses_lun_that_is_not_masked(void **state)
{
    struct npiv_identity id = vm();
    struct hv_err err;

    fake_add_hba(&fake, 5, "NPort (fabric via point-to-point)", 64, 0);
    struct fake_target *t = fake_add_target(&fake, TARGET_WWPN);
    fake_zone(t, id.fc[0].wwpn);
    fake_mask(t, id.fc[0].wwpn, 0);
    fake_mask(t, id.fc[0].wwpn, 1);
    fake_mask(t, OTHER_INITIATOR, 3);                /* LUN 3 is someone else's */
    fake_start(&fake);

    assert_int_equal(npiv_check_access(fake.root, &id, TARGET_WWPN, 3, false, &fast, &err),
                     -ENOENT);
    assert_non_null(strstr(err.msg, "not masked: LUN 3 of target 50:0a:09:80:00:00:11:11 is "
                                    "not reported to vport 50:01:43:80:00:00:00:71"));
    assert_non_null(strstr(err.msg, "LUNs it reports: 0, 1"));
    assert_false(host_with_wwpn_exists(id.fc[0].wwpn));
}

static void test_check_access_checks_set_b_too(void **state)
{
    struct npiv_identity id = vm();
    struct hv_err err;

    fake_add_hba(&fake, 5, "NPort (fabric via point-to-point)", 64, 0);
    struct fake_target *t = fake_add_target(&fake, TARGET_WWPN);
    fake_zone(t, id.fc[NPIV_SET_A].wwpn);            /* the administrator forgot set B */
    fake_mask(t, id.fc[NPIV_SET_A].wwpn, 3);
    fake_start(&fake);

    assert_int_equal(npiv_check_access(fake.root, &id, TARGET_WWPN, 3, true, &fast, &err), 0);
    assert_int_equal(npiv_check_access(fake.root, &id, TARGET_WWPN, 3, false, &fast, &err),
                     -EHOSTUNREACH);
    assert_non_null(strstr(err.msg, "not visible to vport 50:01:43:80:00:00:00:73"));
    assert_non_null(strstr(err.msg, "address set B"));
    assert_false(host_with_wwpn_exists(id.fc[NPIV_SET_B].wwpn));
}

static void test_no_fc_hba_at_all_is_a_clear_error(void **state)
{
    struct npiv_identity id = vm();
    struct npiv_vport v;
    struct hv_err err;

    fake_start(&fake);                               /* classes exist, no hosts */
    assert_int_equal(npiv_vport_bring_up(fake.root, &id.fc[0], &fast, &v, &err), -ENODEV);
    assert_non_null(strstr(err.msg, "no Fibre Channel HBA under"));
    /* and a root with no FC transport at all */
    assert_int_equal(npiv_vport_bring_up(t_path("nowhere"), &id.fc[0], &fast, &v, &err),
                     -ENODEV);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
        T(test_vport_create_and_delete_write_the_kernel_strings),
        T(test_hba_list_explains_each_hba_and_pick_takes_the_usable_one),
        T(test_refuses_hba_without_npiv_vports_left),
        T(test_refuses_hba_whose_port_type_cannot_do_npiv),
        T(test_online_wait_times_out_cleanly_and_deletes_the_vport),
        T(test_fabric_rejection_fails_fast_with_the_vport_state),
        T(test_second_vport_with_the_same_wwpn_is_refused),
        T(test_rports_and_luns_are_listed_per_vport_host),
        T(test_find_lun_names_the_block_device_and_its_vpd),
        T(test_check_access_passes_with_both_sets_zoned_and_masked),
        T(test_check_access_refuses_lun_whose_target_port_is_not_zoned),
        T(test_check_access_refuses_lun_that_is_not_masked),
        T(test_check_access_checks_set_b_too),
        T(test_no_fc_hba_at_all_is_a_clear_error),
#undef T
    };
    hv_log_set_level(HV_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
