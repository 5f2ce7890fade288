-- 0004: the department and floor identities given back (issue 21, fault 3). Before this
-- release every upsert spent a value of each (INSERT ... ON CONFLICT DO NOTHING takes one even
-- when the row exists), so a SMALLINT identity ran out after some thousands of starts and then
-- every upsert was refused. Each sequence restarts after the highest id stored (at 1 on an empty
-- table): the values spent on rows that were never inserted come back, and a sequence that had
-- run out gives values again. The ids stored are kept.
SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('public.department', 'department_id'),
                         coalesce(max(department_id), 1), max(department_id) IS NOT NULL)
FROM public.department;
SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('public.floor', 'floor_id'),
                         coalesce(max(floor_id), 1), max(floor_id) IS NOT NULL)
FROM public.floor;
