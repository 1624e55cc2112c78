"""The five scenarios of issue 4, one module each: KEY, TITLE and run(world, ctx, result)."""
