# The authsim image: Python 3.11 on Debian 12 with SoftHSM2, MIT Kerberos (KDC with PKINIT) and
# PostgreSQL; runs `authsim`, `authctl`, the nodes, the targets and the real servers behind them. Used
# by docker-compose.yml (init, node1..3, targets-trust, desktop, kdc, db, postgres, authctl); etcd runs
# from the upstream etcd image.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends softhsm2 \
        krb5-kdc krb5-pkinit krb5-user krb5-admin-server postgresql \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/authsim
COPY pyproject.toml README.md ./
COPY auth_node ./auth_node
COPY cluster ./cluster
COPY hsm ./hsm
COPY build_backend ./build_backend
RUN pip install --no-cache-dir .

# Mount points of the named volumes, owned by the runtime user so fresh volumes inherit it; the KDC's
# and PostgreSQL's volumes are mounted inside the targets volume, where the target code finds them.
RUN useradd --system --user-group --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin authsim \
    && install -d -o authsim -g authsim -m 0700 /state /pki /ca /cluster /targets /targets/targets \
        /targets/targets/desktop /targets/targets/desktop/kdc /targets/targets/db /targets/targets/db/postgres

USER authsim
WORKDIR /state
ENV PYTHONUNBUFFERED=1 \
    AUTHSIM_PKCS11_MODULE=/usr/lib/softhsm/libsofthsm2.so
EXPOSE 3025 3030
ENTRYPOINT ["authsim"]
CMD ["--help"]
