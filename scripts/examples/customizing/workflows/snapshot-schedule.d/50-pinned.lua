-- workflows/snapshot-schedule.d/50-pinned.lua: a schedule's snapshot
-- labelled `vmsnap.io/pinned: "true"` is never pruned, whatever the
-- retention policy says (docs/customizing.md, "Your own retention").
return function(W)
  W.steps:wrap("retention", function(run, ctx, sched, facts)
    local ok, err, code = run(ctx, sched, facts) -- the built-in policy first
    if not ok then return ok, err, code end
    for _, s in ipairs(facts.snapshots) do
      if (s.metadata.labels or {})["vmsnap.io/pinned"] == "true" then
        facts.decisions[s.metadata.name] = { keep = true, why = { "pinned" } }
      end
    end
    return true
  end)
end
