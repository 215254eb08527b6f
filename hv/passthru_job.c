/*
 * Attach checks off the reactor thread.
 *
 * Proving that a LUN may be handed to a VM means waiting on things outside
 * this host: a SAN login with the VM's name (5 s to give up on a SAN that
 * does not answer), an FC vport coming Online and the kernel scanning what
 * it sees (seconds), libblkid reading the LUN. Done on the daemon's reactor,
 * every other VM's I/O would stand still meanwhile. So each attach's checks
 * run on a worker (common/'s hv_workers), on copies; the attach itself
 * (which touches VMs and controllers) runs on the reactor when they are
 * done. hvctl polls "disk.attach_status" (or its other name "job.status")
 * for the answer, as it does for a takeover. `san add` and `san luns` talk
 * to the SAN the same way.
 */
#include "passthru_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

/* Checks of different attaches wait on different SANs and fabrics: a few at
 * once, so one that waits out its timeouts does not hold up the others. */
#define JOB_THREADS 4
/* Finished jobs nobody asked about (hvctl killed) are kept this many. */
#define JOBS_FINISHED_KEPT 32

/* A finished check whose VM is busy (a backup, a checkpoint) or while some
 * VM's guest I/O is held looks again this often: the LUN goes in after the
 * cut of a backup, never in the middle of one. */
#define JOB_FINISH_RETRY_MS 50

static void job_free(struct hv_pt_job *job)
{
    if (job->d)
        hv_timer_cancel(hv_daemon_runtime(job->d)->reactor, &job->finish_timer);
    if (job->cleanup)
        job->cleanup(job);
    json_decref(job->result);
    free(job);
}

static void job_unlink(struct hv_passthru *p, struct hv_pt_job *job)
{
    for (struct hv_pt_job **pp = &p->jobs; *pp; pp = &(*pp)->next)
        if (*pp == job) {
            *pp = job->next;
            return;
        }
}

static void trim_finished(struct hv_passthru *p)
{
    unsigned kept = 0;
    for (struct hv_pt_job **pp = &p->jobs; *pp;) {
        struct hv_pt_job *job = *pp;
        if (job->is_finished && ++kept > JOBS_FINISHED_KEPT) {
            *pp = job->next;
            job_free(job);
            continue;
        }
        pp = &job->next;
    }
}

static void job_run(struct hv_work *w)
{
    struct hv_pt_job *job = hv_container_of(w, struct hv_pt_job, worker_item);
    job->work(job);
}

static void job_finish(void *arg)
{
    struct hv_pt_job *job = arg;
    struct hv_err err = {0};
    json_t *result = NULL;

    if (job->vm[0] && !hv_daemon_vm_may_change(job->d, job->vm)) {
        if (!job->has_waited)
            hv_info("VM '%s': the attach at controller %d slot %d is checked; it waits until "
                    "no request changes the VM", job->vm, job->controller, job->slot);
        job->has_waited = true;
        hv_timer_arm(hv_daemon_runtime(job->d)->reactor, &job->finish_timer,
                     JOB_FINISH_RETRY_MS, job_finish, job);
        return;
    }
    int ret = job->finish(job, &result, &err);

    job->is_finished = true;
    job->status = ret;
    if (ret < 0) {
        job->err = err;
        if (job->controller >= 0)
            hv_info("VM '%s': attach at controller %d slot %d refused: %s", job->vm,
                    job->controller, job->slot, hv_err_msg(&err, ret));
        else
            hv_info("%s: %s", job->what, hv_err_msg(&err, ret));
        json_decref(result);
    } else {
        job->result = result;
    }
    trim_finished(hv_daemon_runtime(job->d)->passthru);
}

static void job_done(struct hv_work *w)
{
    job_finish(hv_container_of(w, struct hv_pt_job, worker_item));
}

int hv_pt_job_start(struct hv_daemon *d, struct hv_pt_job *job, json_t **result,
                    struct hv_err *err)
{
    struct hv_runtime *rt = hv_daemon_runtime(d);
    struct hv_passthru *p = rt->passthru;
    int ret;

    for (struct hv_pt_job *o = p->jobs; o; o = o->next) {
        if (o->is_finished)
            continue;
        if (job->controller >= 0 && !strcmp(o->vm, job->vm) &&
            o->controller == job->controller && o->slot == job->slot)
            ret = hv_err_set(err, -EBUSY, "VM '%s': an attach to controller %d slot %d is "
                             "being checked already", job->vm, job->controller, job->slot);
        else if (job->key[0] && !strcmp(o->key, job->key))
            ret = hv_err_set(err, -EBUSY, "%s is being attached to VM '%s' (controller %d "
                             "slot %d) right now", job->key, o->vm, o->controller, o->slot);
        else if (job->is_fc && o->is_fc && !strcmp(o->vm, job->vm))
            ret = hv_err_set(err, -EBUSY, "VM '%s': another Fibre Channel attach is bringing "
                             "its vport up; try again when it is done", job->vm);
        else
            continue;
        job_free(job);
        return ret;
    }
    if (!p->workers &&
        (ret = hv_workers_create(rt->reactor, JOB_THREADS, "attach checks", &p->workers,
                                 err)) < 0) {
        job_free(job);
        return ret;
    }
    job->id = ++p->next_job_id;
    job->d = d;
    job->worker_item.run = job_run;
    job->worker_item.done = job_done;
    job->next = p->jobs;
    p->jobs = job;
    hv_workers_queue(p->workers, &job->worker_item);
    *result = json_pack("{s:b, s:I}", "running", 1, "job", (json_int_t)job->id);
    return 0;
}

int hv_pt_attach_job_new(struct hv_daemon *d, const json_t *req, const char *ref_key,
                         size_t priv_size, struct hv_vm **vm_out, const char **ref,
                         struct hv_pt_job **out, struct hv_err *err)
{
    struct hv_pt_job *job;
    struct hv_vm *vm;
    const char *vm_name;
    json_int_t controller = -1;
    json_int_t slot = -1;
    int ret;

    if ((ret = hv_passthru_arg_str(req, "vm", true, &vm_name, err)) < 0 ||
        (ret = hv_passthru_arg_str(req, ref_key, true, ref, err)) < 0)
        return ret;
    if (json_unpack((json_t *)req, "{s:I, s:I}", "controller", &controller, "slot", &slot) ||
        controller < 0 || controller >= HV_MAX_CONTROLLERS || slot < 0 ||
        slot >= HV_SLOTS_PER_CONTROLLER)
        return hv_err_set(err, -EINVAL, "request needs 'controller' 0..%d and 'slot' 0..%d",
                          HV_MAX_CONTROLLERS - 1, HV_SLOTS_PER_CONTROLLER - 1);
    vm = hv_daemon_find_vm(d, vm_name);
    if (!vm)
        return hv_err_set(err, -ENOENT, "no VM named '%s'", vm_name);
    if (vm->disks[controller][slot])
        return hv_err_set(err, -EBUSY, "VM '%s': controller %d slot %d already holds %s",
                          vm_name, (int)controller, (int)slot,
                          vm->disks[controller][slot]->cfg.path);
    job = calloc(1, sizeof(*job));
    if (!job || !(job->priv = calloc(1, priv_size))) {
        free(job);
        return hv_err_set(err, -ENOMEM, "out of memory");
    }
    snprintf(job->vm, sizeof(job->vm), "%s", vm_name);
    job->controller = (int)controller;
    job->slot = (int)slot;
    *vm_out = vm;
    *out = job;
    return 0;
}

int hv_pt_job_status(struct hv_daemon *d, const json_t *req, json_t **result,
                     struct hv_err *err)
{
    struct hv_passthru *p = hv_daemon_runtime(d)->passthru;
    json_int_t id = -1;

    if (json_unpack((json_t *)req, "{s:I}", "job", &id) || id <= 0)
        return hv_err_set(err, -EINVAL, "request needs 'job' (the number 'disk attach' "
                          "answered)");
    for (struct hv_pt_job *job = p->jobs; job; job = job->next) {
        if (job->id != (uint64_t)id)
            continue;
        if (!job->is_finished) {
            *result = json_pack("{s:b, s:I}", "running", 1, "job", id);
            return 0;
        }
        int ret = job->status;
        if (ret < 0)
            *err = job->err;
        else
            *result = json_incref(job->result);
        job_unlink(p, job);
        job_free(job);
        return ret;
    }
    return hv_err_set(err, -ENOENT, "no attach job %" JSON_INTEGER_FORMAT " (its answer was "
                      "given already, or hvstord restarted)", id);
}

void hv_pt_jobs_fini(struct hv_passthru *p)
{
    /* Checks still running (a SAN or a vport they wait on) end within their
     * own timeouts; destroy waits for them and reports none, so what they
     * found is dropped unattached (cleanup deletes a vport they brought up). */
    hv_workers_destroy(p->workers);
    p->workers = NULL;
    while (p->jobs) {
        struct hv_pt_job *job = p->jobs;
        p->jobs = job->next;
        job_free(job);
    }
}
