"""The schema as numbered migrations: migration *n* is ``MIGRATIONS[n - 1]``, applied once and recorded in
``schema_migrations``. Append new ones; never edit one that has shipped (existing databases already ran it)."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE SEQUENCE cell_id_seq START 1;
    CREATE SEQUENCE audit_id_seq START 1;
    CREATE SEQUENCE review_id_seq START 1;
    CREATE SEQUENCE job_id_seq START 1;
    CREATE TABLE samples (
        id VARCHAR PRIMARY KEY,
        specimen VARCHAR NOT NULL,
        patient_pseudonym VARCHAR NOT NULL DEFAULT '',
        collected_at TIMESTAMPTZ,
        status VARCHAR NOT NULL,
        notes VARCHAR NOT NULL DEFAULT '',
        created_at TIMESTAMPTZ NOT NULL,
        created_by VARCHAR NOT NULL
    );
    CREATE TABLE cells (
        id BIGINT PRIMARY KEY,
        sample_id VARCHAR NOT NULL,
        cell_key VARCHAR NOT NULL,
        content_hash VARCHAR NOT NULL,
        source_file VARCHAR NOT NULL,
        blob_path VARCHAR NOT NULL,
        channels INTEGER NOT NULL,
        shape VARCHAR NOT NULL,
        dtype VARCHAR NOT NULL,
        qc_state VARCHAR NOT NULL,
        qc_reason VARCHAR,
        reference_label VARCHAR,
        targets VARCHAR NOT NULL DEFAULT '{}',
        extra VARCHAR NOT NULL DEFAULT '{}',
        reviewed_label VARCHAR,
        created_at TIMESTAMPTZ NOT NULL
    );
    CREATE UNIQUE INDEX cells_sample_key ON cells (sample_id, cell_key);
    CREATE INDEX cells_sample_hash ON cells (sample_id, content_hash);
    CREATE TABLE predictions (
        cell_id BIGINT NOT NULL,
        sample_id VARCHAR NOT NULL,
        model_id VARCHAR NOT NULL,
        model_version VARCHAR NOT NULL,
        predicted_class VARCHAR NOT NULL,
        confidence DOUBLE NOT NULL,
        probabilities VARCHAR NOT NULL,
        targets VARCHAR NOT NULL DEFAULT '{}',
        created_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (cell_id, model_id)
    );
    CREATE TABLE review_actions (
        id BIGINT PRIMARY KEY,
        cell_id BIGINT NOT NULL,
        sample_id VARCHAR NOT NULL,
        actor VARCHAR NOT NULL,
        acted_at TIMESTAMPTZ NOT NULL,
        old_label VARCHAR,
        new_label VARCHAR NOT NULL,
        note VARCHAR NOT NULL DEFAULT ''
    );
    CREATE TABLE manual_counts (
        sample_id VARCHAR NOT NULL,
        cell_type VARCHAR NOT NULL,
        count INTEGER,
        percent DOUBLE,
        total_counted INTEGER,
        entered_by VARCHAR NOT NULL,
        entered_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (sample_id, cell_type)
    );
    CREATE TABLE reports (
        sample_id VARCHAR NOT NULL,
        version INTEGER NOT NULL,
        status VARCHAR NOT NULL,
        interpretation VARCHAR NOT NULL DEFAULT '',
        interpretation_source VARCHAR NOT NULL DEFAULT 'template',
        amends_version INTEGER,
        amendment_reason VARCHAR,
        created_by VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        signed_by VARCHAR,
        signed_at TIMESTAMPTZ,
        pdf_path VARCHAR,
        pdf_hash VARCHAR,
        PRIMARY KEY (sample_id, version)
    );
    CREATE TABLE users (
        username VARCHAR PRIMARY KEY,
        display_name VARCHAR NOT NULL DEFAULT '',
        role VARCHAR NOT NULL,
        password_hash VARCHAR NOT NULL,
        active BOOLEAN NOT NULL DEFAULT TRUE,
        created_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE audit (
        id BIGINT PRIMARY KEY,
        happened_at TIMESTAMPTZ NOT NULL,
        actor VARCHAR NOT NULL,
        action VARCHAR NOT NULL,
        entity VARCHAR NOT NULL,
        entity_id VARCHAR NOT NULL,
        sample_id VARCHAR,
        before VARCHAR,
        after VARCHAR,
        prev_hash VARCHAR NOT NULL,
        hash VARCHAR NOT NULL
    );
    CREATE TABLE jobs (
        id BIGINT PRIMARY KEY,
        kind VARCHAR NOT NULL,
        sample_id VARCHAR,
        status VARCHAR NOT NULL,
        done BIGINT NOT NULL DEFAULT 0,
        total BIGINT NOT NULL DEFAULT 0,
        rate DOUBLE,
        message VARCHAR NOT NULL DEFAULT '',
        params VARCHAR NOT NULL DEFAULT '{}',
        result VARCHAR,
        created_by VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        finished_at TIMESTAMPTZ
    );
    CREATE TABLE models (
        id VARCHAR PRIMARY KEY,
        path VARCHAR NOT NULL,
        usable BOOLEAN NOT NULL DEFAULT FALSE,
        card VARCHAR NOT NULL,
        registered_by VARCHAR NOT NULL,
        registered_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE studies (
        name VARCHAR PRIMARY KEY,
        model_id VARCHAR NOT NULL,
        model_version VARCHAR NOT NULL,
        sample_ids VARCHAR NOT NULL,
        result VARCHAR NOT NULL,
        created_by VARCHAR NOT NULL,
        created_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE study_results (
        study_name VARCHAR NOT NULL,
        cell_type VARCHAR NOT NULL,
        comparison VARCHAR NOT NULL,
        result VARCHAR NOT NULL,
        PRIMARY KEY (study_name, cell_type, comparison)
    );
    """,
    # 2: the model whose predictions a sample's differential uses
    """
    ALTER TABLE samples ADD COLUMN analysis_model_id VARCHAR;
    """,
    # 3: ISO 15189 report elements of a sample: who ordered the test and when the laboratory received it
    """
    ALTER TABLE samples ADD COLUMN requester VARCHAR NOT NULL DEFAULT '';
    ALTER TABLE samples ADD COLUMN received_at TIMESTAMPTZ;
    """,
    # 4: login throttling and lockout per attempted name (kept as a SHA-256, known or not), and a per-account
    # session epoch that a password change, reset, deactivation or role change raises, ending live sessions
    """
    CREATE TABLE login_attempts (
        name_key VARCHAR PRIMARY KEY,
        failures INTEGER NOT NULL DEFAULT 0,
        last_failed_at TIMESTAMPTZ,
        locked_until TIMESTAMPTZ,
        lockouts INTEGER NOT NULL DEFAULT 0
    );
    ALTER TABLE users ADD COLUMN session_epoch INTEGER NOT NULL DEFAULT 0;
    """,
    # 5: the domain check of a sample's latest prediction run per model (phenotyping.analysis.domain): the verdict
    # as JSON and the per-cell scores it was computed from (so a resumed run judges all cells)
    """
    CREATE TABLE domain_checks (
        sample_id VARCHAR NOT NULL,
        model_id VARCHAR NOT NULL,
        model_version VARCHAR NOT NULL,
        in_distribution BOOLEAN,
        result VARCHAR NOT NULL,
        cell_scores VARCHAR NOT NULL DEFAULT '{}',
        checked_by VARCHAR NOT NULL,
        checked_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (sample_id, model_id)
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
