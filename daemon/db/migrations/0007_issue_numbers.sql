-- Short issue numbers per project, without gaps (SHOP-1, SHOP-2, ...), for people to say
-- and type. `issues.id` stays the key: its sequence skips values whenever an upsert
-- finds the issue already there. The batch that creates issues numbers them from the
-- project's counter in the same transaction.

ALTER TABLE projects ADD COLUMN issue_counter bigint NOT NULL DEFAULT 0
    CHECK (issue_counter >= 0);
ALTER TABLE issues ADD COLUMN short_id bigint CHECK (short_id > 0);

UPDATE issues i SET short_id = n.short_id
  FROM (SELECT id, row_number() OVER (PARTITION BY project_id ORDER BY id) AS short_id
          FROM issues) n
 WHERE i.id = n.id;
UPDATE projects p SET issue_counter = c.n
  FROM (SELECT project_id, max(short_id) AS n FROM issues GROUP BY project_id) c
 WHERE p.id = c.project_id;

CREATE UNIQUE INDEX issues_short_id ON issues (project_id, short_id);
-- Issues a crash left unnumbered are numbered by the next batch of their project.
CREATE INDEX issues_unnumbered ON issues (project_id) WHERE short_id IS NULL;
