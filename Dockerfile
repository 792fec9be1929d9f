# syntax=docker/dockerfile:1
#
# promptops on Airflow's official image: the pinned runtime requirements, the promptops
# package, the DAGs and the UI plugin. docker-compose.yaml builds it; docs/production.md
# says how to run, scale and upgrade it.
#
# The Python minor version of the tag must match the one requirements.txt was compiled
# for (3.11): the pins are resolved for it.
FROM apache/airflow:3.3.2-python3.11

USER airflow

# Pinned dependencies first (the slowest layer, rebuilt only when the pins change). Airflow
# itself is named with the image's version so pip can never up- or downgrade it: the way
# the image's documentation asks for extra packages.
COPY --chown=airflow:0 requirements.txt /opt/airflow/promptops/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==3.3.2" \
        -r /opt/airflow/promptops/requirements.txt

# The promptops package, installed editable from a checkout-shaped folder: the code finds
# include/config and include/playbooks two levels above the package
# (promptops.settings.PROJECT_ROOT), so they stay beside include/promptops. pyproject.toml
# names README.md as the package's readme, so it comes along.
COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow/promptops/
COPY --chown=airflow:0 include /opt/airflow/promptops/include
RUN pip install --no-cache-dir --no-deps -e /opt/airflow/promptops

# DAGs and plugins where the image's Airflow looks for them (AIRFLOW_HOME=/opt/airflow).
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins

# Mount points of the compose file's named volumes: a new volume takes the image folder's
# owner, so the airflow user can write there without a chown.
RUN mkdir -p /opt/airflow/promptops-state /opt/airflow/auth
