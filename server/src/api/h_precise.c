/* h_precise.c - POST /v1/runs/{run}/precise/reset: start a new PreciseBN generation. */
#include <string.h>

#include "base/log.h"
#include "http/http.h"
#include "registry/registry.h"

/* Body: empty, {} or {"domain": NAME or "*"}. @return 0 or NS_EINVAL; *domain NULL = all. */
static int parse_body(nsd_request_t *req, char *domain, const char **sel, ns_error_detail_t *err)
{
    *sel = NULL;
    if (req->body.len == 0)
        return 0;
    json_error_t jerr;
    json_t *root = json_loadb(req->body.data, req->body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return ns_error_set(err, NS_EINVAL, "", "malformed JSON: %s", jerr.text);
    int rc = 0;
    const char *key;
    json_t *value;
    if (!json_is_object(root)) {
        rc = ns_error_set(err, NS_EINVAL, "", "expected an object");
        goto out;
    }
    json_object_foreach(root, key, value)
    {
        if (strcmp(key, "domain") != 0) {
            rc = ns_error_set(err, NS_EINVAL, key, "unknown field");
            goto out;
        }
        const char *d = json_string_value(value);
        if (d == NULL || (strcmp(d, "*") != 0 && !ns_name_valid(d))) {
            rc = ns_error_set(err, NS_EINVAL, "domain", "expected a domain name or \"*\"");
            goto out;
        }
        strcpy(domain, d);
        *sel = strcmp(d, "*") == 0 ? NULL : domain;
    }
out:
    json_decref(root);
    return rc;
}

void nsd_h_precise_reset(nsd_request_t *req)
{
    ns_error_detail_t err = {0};
    char domain[NS_NAME_MAX + 1];
    const char *sel;
    uint64_t generation = 0;
    int rc = parse_body(req, domain, &sel, &err);
    rc = rc ? rc
            : nsd_registry_precise_reset_known(req->server->registry, req->run, sel, &generation,
                                               &err);
    if (rc != 0) {
        nsd_respond_detail(req, rc, &err);
        return;
    }
    nsd_log(NSD_LOG_INFO, "precise_reset", "run=%s domain=%s generation=%llu", req->run,
            sel ? sel : "*", (unsigned long long)generation);
    nsd_respond_durable(req, 200,
                        json_pack("{s:s, s:s, s:I}", "run", req->run, "domain", sel ? sel : "*",
                                  "generation", (json_int_t)generation));
}
