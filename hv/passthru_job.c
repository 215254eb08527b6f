/*
 * Attach checks off the reactor thread.
 *
 * Proving that a LUN may be handed to a VM means waiting on things outside
 * this host: a SAN login with the VM's name (5 s to give up on a SAN that
 * does not answer), an FC vport coming Online and the kernel scanning what
 * it sees (seconds), libblkid reading the LUN. Done on the daemon's reactor,
 * every other VM's I/O would stand still meanwhile. So each attach gets a
 * thread for its checks, which works only on copies; it signals an eventfd
 * in the reactor when done, and the attach itself (which touches VMs and
 * controllers) runs there. hvctl polls "disk.attach_status" for the answer,
 * as it does for a takeover.
 */
#include "passthru_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Finished jobs nobody asked about (hvctl killed) are kept this many. */
#define JOBS_FINISHED_KEPT 32

static void job_free(struct hv_pt_job *job)
{
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

static void on_job_event(void *arg, uint32_t events)
{
    struct hv_passthru *p = arg;
    uint64_t count;
    (void)events;

    if (read(p->job_efd, &count, sizeof(count)) < 0 && errno != EAGAIN)
        hv_warn("attach jobs: eventfd read: %s", strerror(errno));
    for (struct hv_pt_job *job = p->jobs; job; job = job->next) {
        if (job->is_finished || !atomic_load(&job->is_worked))
            continue;
        pthread_join(job->thread, NULL);
        struct hv_err err = {0};
        json_t *result = NULL;
        int ret = job->finish(job, &result, &err);
        job->is_finished = true;
        job->status = ret;
        if (ret < 0) {
            job->err = err;
            hv_info("VM '%s': attach at controller %d slot %d refused: %s", job->vm,
                    job->controller, job->slot, hv_err_msg(&err, ret));
            json_decref(result);
        } else {
            job->result = result;
        }
    }
    trim_finished(p);
}

static void *job_thread(void *arg)
{
    struct hv_pt_job *job = arg;
    struct hv_passthru *p = hv_daemon_runtime(job->d)->passthru;
    uint64_t one = 1;

    job->work(job);
    atomic_store(&job->is_worked, true);
    if (write(p->job_efd, &one, sizeof(one)) < 0)
        hv_warn("attach jobs: eventfd write: %s", strerror(errno));
    return NULL;
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
        if (!strcmp(o->vm, job->vm) && o->controller == job->controller &&
            o->slot == job->slot)
            ret = hv_err_set(err, -EBUSY, "VM '%s': an attach to controller %d slot %d is "
                             "being checked already", job->vm, job->controller, job->slot);
        else if (!strcmp(o->key, job->key))
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
    if (p->job_efd < 0) {
        p->job_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (p->job_efd < 0) {
            ret = hv_err_errno(err, "eventfd", "attach jobs");
            job_free(job);
            return ret;
        }
        p->job_watch = hv_reactor_add_fd(rt->reactor, p->job_efd, EPOLLIN, on_job_event, p);
        if (!p->job_watch) {
            close(p->job_efd);
            p->job_efd = -1;
            job_free(job);
            return hv_err_set(err, -ENOMEM, "attach jobs: cannot watch the eventfd");
        }
    }
    job->id = ++p->next_job_id;
    job->d = d;
    atomic_store(&job->is_worked, false);
    ret = -pthread_create(&job->thread, NULL, job_thread, job);
    if (ret < 0) {
        job_free(job);
        return hv_err_set(err, ret, "cannot start the attach checks: %s", strerror(-ret));
    }
    job->next = p->jobs;
    p->jobs = job;
    *result = json_pack("{s:b, s:I}", "running", 1, "job", (json_int_t)job->id);
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
    /* A worker may still be waiting on a SAN or a vport: wait for it (its
     * own timeouts bound that), then drop what it found unattached. */
    while (p->jobs) {
        struct hv_pt_job *job = p->jobs;
        p->jobs = job->next;
        if (!job->is_finished)
            pthread_join(job->thread, NULL);
        job_free(job);
    }
    if (p->job_watch)
        hv_reactor_del_fd(p->reactor, p->job_watch);
    p->job_watch = NULL;
    if (p->job_efd >= 0)
        close(p->job_efd);
    p->job_efd = -1;
}
